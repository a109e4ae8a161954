"""One pure-ASGI layer around the app: body-size limit, request metrics, one JSON log line each."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics

access = logging.getLogger("neumeta.access")


class RequestGuard:
    """The body read whole before the app sees it (so a body over the limit is a 413 however it is sent,
    Content-Length or chunked), HEAD routed as GET and answered without the body (so it works wherever
    GET does), and every request timed and logged."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "cache": "-"}
        method = scope["method"]
        if method == "HEAD":  # routed as GET, answered without the body (RFC 9110 9.3.2)
            scope = {**scope, "method": "GET", "neumeta.head": True}
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(send, state)
        elif declared not in (None, b"0") or b"transfer-encoding" in headers:
            body = await self._read(receive)
            if body is None:
                await self._reject(send, state)
            else:
                await self._run(scope, _replay(body, receive), send, state)
        else:
            await self._run(scope, receive, send, state)
        self._record(scope, method, state, time.perf_counter() - started)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit."""
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _run(self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any]) -> None:
        head = scope.get("neumeta.head", False)

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-neumeta-cache":
                        state["cache"] = value.decode()
            elif head and message["type"] == "http.response.body":  # the headers of GET, no body
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, observed_send)

    async def _reject(self, send: Send, state: dict[str, Any]) -> None:
        body = json.dumps(
            {"error": "payload_too_large", "detail": f"request bodies are limited to {self.max_body_bytes} bytes"}
        ).encode()
        state["status"] = 413
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),  # the rest of the body is not read
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _record(scope: Scope, method: str, state: dict[str, Any], seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"  # a template, never the raw path
        record(template, method, int(state["status"]), seconds, state["cache"])


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then waits as the server's would (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


@functools.lru_cache(maxsize=256)
def _histogram(route: str, method: str, status_class: str) -> Any:
    return metrics.REQUESTS.labels(route, method, status_class)


class AccessLog:
    """One JSON line per request, written in batches: at thousands of cache hits a second, a write (and a
    flush) per line cost more than the hit itself. A batch is written when it reaches `max_lines`, or
    `interval` seconds after its first line, by the event loop the requests run on."""

    def __init__(self, logger: logging.Logger, interval: float = 0.1, max_lines: int = 512) -> None:
        self.logger, self.interval, self.max_lines = logger, interval, max_lines
        self._lines: list[str] = []

    def add(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= self.max_lines:
            self.flush()
        elif len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_later(self.interval, self.flush)
            except RuntimeError:  # no event loop: nothing would flush it later
                self.flush()

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self.logger.info("\n".join(lines))


ACCESS_LOG = AccessLog(access)


def record(route: str, method: str, status: int, seconds: float, cache: str) -> None:
    """The request's metric sample and its JSON access-log line."""
    _histogram(route, method, f"{status // 100}xx").observe(seconds)
    if access.isEnabledFor(logging.INFO):
        line = {"method": method, "route": route, "status": status, "ms": round(seconds * 1e3, 2), "cache": cache}
        ACCESS_LOG.add(json.dumps(line))


def record_hit(route: str, method: str, seconds: float, size: int) -> None:
    """record() for a cache hit answered by the hot path, with the bytes served; the log line is formatted
    without json.dumps, since every field is one of our own constants or a number."""
    _histogram(route, method, "2xx").observe(seconds)
    metrics.BYTES.inc(size)
    if access.isEnabledFor(logging.INFO):
        ACCESS_LOG.add(
            f'{{"method": "{method}", "route": "{route}", "status": 200, "ms": {seconds * 1e3:.2f}, "cache": "hit"}}'
        )
