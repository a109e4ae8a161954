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


class _TooLarge(Exception):
    pass


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "cache": "-", "sent": False}
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(send, state)
        else:
            await self._run(scope, receive, send, state)
        self._record(scope, state, time.perf_counter() - started)

    async def _run(self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any]) -> None:
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise _TooLarge
            return message

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["sent"] = message["status"], True
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-neumeta-cache":
                        state["cache"] = value.decode()
            await send(message)

        try:
            await self.app(scope, counted_receive, observed_send)
        except _TooLarge:
            if not state["sent"]:
                await self._reject(send, state)

    async def _reject(self, send: Send, state: dict[str, Any]) -> None:
        body = json.dumps(
            {"error": "payload_too_large", "detail": f"request bodies are limited to {self.max_body_bytes} bytes"}
        ).encode()
        state["status"] = 413
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _record(scope: Scope, state: dict[str, Any], seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"  # a template, never the raw path
        record(template, scope["method"], int(state["status"]), seconds, state["cache"])


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
