"""`neumeta serve`: start like a model server.

1. Settings and the device are checked first: a bad NEUMETA_* value is one line and nothing is loaded.
2. The port is bound next, so a port in use is said at once, before any loading.
3. uvicorn serves on that socket right away: /healthz answers while the checkpoints load in the
   background, /readyz answers 503 until they are loaded and warmed up.
4. A checkpoint that fails to load stops the server, with one line and exit status 2.
"""

from __future__ import annotations

import logging
import socket
import sys

import uvicorn

from neumeta_core.errors import InputError
from service.config import load_settings, misspelt


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or InputError saying why there is none."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise InputError(f"--host {host!r} is not an address to listen on ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(host: str, port: int) -> int:
    """Serve until SIGTERM or SIGINT (0), or until loading fails (2)."""
    for warning in misspelt():
        print(f"neumeta serve: warning: {warning}", file=sys.stderr)
    settings = load_settings()
    from service.main import create_app, resolve_device  # torch and the app: only once the settings hold

    resolve_device(settings.device)
    sock = bind(host, port)
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s")
    failed: list[Exception] = []
    server: uvicorn.Server | None = None

    def stop(error: Exception) -> None:
        failed.append(error)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, background=True, on_failure=stop)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=False,  # the app writes one JSON line per request
        proxy_headers=False,  # nothing here uses the client's address; parsing X-Forwarded-* costs every request
        timeout_graceful_shutdown=int(settings.shutdown_grace),
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if failed and isinstance(failed[0], InputError):
        print(f"neumeta serve: {failed[0]}", file=sys.stderr)
        return 2
    if failed:  # a bug: its traceback
        raise failed[0]
    return 0
