"""uvicorn's httptools protocol, with cache hits written straight to the socket.

A hit (service/hotpath.py decides, from the same scope an ASGI app would get) is answered without an
asyncio task, ASGI messages or a second write: status line, headers and body go out in one
`transport.writelines`. Everything else, and any request pipelined behind another, goes to the app as
before. uvicorn's protocol class is not a public API, so this is used only with the uvicorn versions
tests/service/test_hotpath.py has run against (SUPPORTED); any other version serves through the ASGI
hot path alone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import uvicorn
from starlette.datastructures import State
from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from service.hotpath import hot_hit
from service.middleware import record_hit

SUPPORTED = ("0.54.",)


def supported() -> bool:
    return uvicorn.__version__.startswith(SUPPORTED)


def protocol_for(state: State) -> type[asyncio.Protocol]:
    """The protocol class for one app; serve with `uvicorn.run(app, http=protocol_for(app.state))`."""

    class HitProtocol(HttpToolsProtocol):
        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            started = time.perf_counter()
            hit = hot_hit(state, cast(Scope, cycle.scope))
            if hit is None:
                super()._start_asgi_task(cycle, app)
                return
            head = [STATUS_LINE[200]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(hit.wire)
            if not cycle.keep_alive:
                head.append(b"connection: close\r\n")
            head.append(b"\r\n")
            self.transport.writelines([b"".join(head), hit.body])
            cycle.response_started = cycle.response_complete = True
            cycle.message_event.set()
            record_hit(hit.route, cycle.scope["method"], time.perf_counter() - started, len(hit.body))
            if not cycle.keep_alive:
                self.transport.close()
            self.on_response_complete()

    return HitProtocol
