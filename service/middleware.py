"""One pure-ASGI layer around the app: body-size limit, request metrics, one JSON log line each."""

from __future__ import annotations

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
        status = int(state["status"])
        metrics.REQUESTS.labels(template, scope["method"], f"{status // 100}xx").observe(seconds)
        line = {
            "method": scope["method"],
            "route": template,
            "status": status,
            "ms": round(seconds * 1e3, 2),
            "cache": state["cache"],
        }
        access.info(json.dumps(line))
