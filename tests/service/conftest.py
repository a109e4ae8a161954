"""Real collaborators for the service tests: a redis-server of our own, the app with its lifespan."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

from tests.processes import BIN, RedisServer, free_port

__all__ = ["BIN", "RedisServer", "free_port"]


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, reached in-process (no socket) at http://127.0.0.1."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as client:
            yield client


def metric(text: str, sample: str) -> float:
    """One sample of the exposition text: 'neumeta_syntheses_total' or 'name{tier="redis",result="hit"}'."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class LiveServer:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path | None) -> None:
        self.url, self.proc, self.log = url, proc, log

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stderr(self) -> str:
        """What the server has written to stderr so far (with `serving(log=...)`)."""
        return self.log.read_text() if self.log is not None else ""


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    """Until /readyz answers 200 (a generous bound: only a hang or a crash should reach it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server did not become ready (exit status {proc.poll()})") from None
            time.sleep(0.1)


@contextmanager
def serving(log: Path | None = None, ready: bool = True, port: int | None = None, **env: str) -> Iterator[LiveServer]:
    """`neumeta serve` as a real process on a loopback port (free, unless given), stopped with SIGTERM; its
    stderr goes to `log` when given. `ready`: wait for /readyz first."""
    port = port or free_port()
    with open(log or os.devnull, "wb") as err:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "NEUMETA_DEVICE": "cpu", **env},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        if ready:
            wait_ready(url, proc)
        yield LiveServer(url, proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
