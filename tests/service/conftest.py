"""Real collaborators for the service tests: a redis-server of our own, the app with its lifespan."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

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
    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url, self.proc = url, proc


@contextmanager
def serving(**env: str) -> Iterator[LiveServer]:
    """`neumeta serve` as a real process on a free loopback port, stopped with SIGTERM."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "NEUMETA_DEVICE": "cpu", **env},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("server did not become ready") from None
                time.sleep(0.2)
        yield LiveServer(url, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
