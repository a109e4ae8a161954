"""The hot path (service/hotpath.py, service/protocol.py) answers exactly as FastAPI would, and only hits.

Each hit is compared with FastAPI's own answer to the same request, forced down the slow path by an
If-None-Match header that matches nothing: status, headers (but the date) and body must be equal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket

import httpx
import pytest

from service.cache import CacheKey
from service.config import Settings
from service.hotpath import QueryMemo
from service.main import create_app
from service.protocol import supported
from tests.service.conftest import metric, running, serving

SLOW = {"if-none-match": '"not-this-one"'}  # the hot path declines it; FastAPI answers 200


def comparable(r: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in r.headers.items() if k not in ("date", "x-neumeta-cache")}
    return r.status_code, headers, r.content


def test_query_memo_is_bounded_and_keeps_the_recent():
    memo = QueryMemo(max_entries=3)
    for n in range(5):
        memo.remember(f"width={n}".encode(), CacheKey("c", n, "onnx", "float32"))
    assert len(memo) == 3
    assert memo.get(b"width=0") is None and memo.get(b"width=4") == str(CacheKey("c", 4, "onnx", "float32"))


def test_in_process_hits_match_fastapi_and_are_logged(caplog):
    caplog.set_level(logging.INFO, logger="neumeta.access")

    async def scenario() -> None:
        async with running(create_app(Settings(device="cpu"))) as c:
            miss = await c.post("/models?width=20")
            hit = await c.post("/models?width=20")
            slow = await c.post("/models?width=20", headers=SLOW)
            assert miss.headers["x-neumeta-cache"] == "miss" and hit.headers["x-neumeta-cache"] == "hit"
            assert comparable(hit) == comparable(slow) == comparable(miss)
            sha = hit.headers["etag"].strip('"')
            by_sha = await c.get(f"/models/{sha}")
            assert comparable(by_sha) == comparable(await c.get(f"/models/{sha}", headers=SLOW))
            assert hashlib.sha256(by_sha.content).hexdigest() == sha
            # what the hot path must never answer: a different query, a range, a body
            assert (await c.post("/models?width=21")).headers["x-neumeta-cache"] == "miss"
            partial = await c.get(f"/models/{sha}", headers={"range": "bytes=0-9"})
            assert partial.status_code == 206 and partial.content == hit.content[:10]
            assert (await c.post("/models?width=99")).status_code == 422
            text = (await c.get("/metrics")).text
            labels = 'method="GET",route="/models/{sha256}",status_class="2xx"'
            sample = f"neumeta_http_request_duration_seconds_count{{{labels}}}"
            assert metric(text, sample) >= 2
            assert metric(text, "neumeta_bytes_served_total") >= 4 * len(hit.content)

    asyncio.run(scenario())
    lines = [json.loads(line) for r in caplog.records if r.name == "neumeta.access" for line in r.message.split("\n")]
    hits = [line for line in lines if line["cache"] == "hit" and line["route"] in ("/models", "/models/{sha256}")]
    assert len(hits) >= 3 and all(line["status"] == 200 and line["ms"] >= 0 for line in hits)


def test_api_keys_hold_on_the_hot_path():
    async def scenario() -> None:
        async with running(create_app(Settings(device="cpu", api_keys="k1,k2"))) as c:
            good = {"authorization": "Bearer k2"}
            assert (await c.post("/models?width=12", headers=good)).headers["x-neumeta-cache"] == "miss"
            hit = await c.post("/models?width=12", headers=good)
            assert hit.status_code == 200 and hit.headers["x-neumeta-cache"] == "hit"
            sha = hit.headers["etag"].strip('"')
            for headers in ({}, {"authorization": "Bearer k3"}, {"authorization": "Basic k2"}):
                assert (await c.post("/models?width=12", headers=headers)).status_code == 401
                assert (await c.get(f"/models/{sha}", headers=headers)).status_code == 401
            assert (await c.get(f"/models/{sha}", headers=good)).content == hit.content

    asyncio.run(scenario())


def raw_exchange(port: int, request: bytes, expect: int) -> list[tuple[bytes, bytes]]:
    """Send raw bytes, read `expect` responses: [(head, body)]; Content-Length framing."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        buf = b""
        for _ in range(expect):
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                assert chunk, "connection closed early"
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            length = int(
                next(v for k, v in (h.split(b": ", 1) for h in head.split(b"\r\n")[1:]) if k == b"content-length")
            )
            while len(buf) < length:
                buf += s.recv(65536)
            out.append((head, buf[:length]))
            buf = buf[length:]
        s.settimeout(2)
        try:
            tail = s.recv(1)
        except TimeoutError:
            tail = None  # still open (keep-alive)
        out.append((b"closed" if tail == b"" else b"open", b""))
    return out


@pytest.mark.skipif(not supported(), reason="this uvicorn is not in service.protocol.SUPPORTED: the ASGI path serves")
def test_real_server_hits_keep_alive_pipelining_and_close():
    with serving() as live:
        port = int(live.url.rsplit(":", 1)[1])
        first = httpx.post(f"{live.url}/models?width=28")
        hit = httpx.post(f"{live.url}/models?width=28")
        slow = httpx.post(f"{live.url}/models?width=28", headers=SLOW)
        assert hit.headers["x-neumeta-cache"] == "hit" and comparable(hit) == comparable(slow) == comparable(first)
        assert hit.headers["server"] == slow.headers["server"] and "date" in hit.headers
        sha = hit.headers["etag"].strip('"')
        assert comparable(httpx.get(f"{live.url}/models/{sha}")) == comparable(
            httpx.get(f"{live.url}/models/{sha}", headers=SLOW)
        )
        # three requests in one packet on one connection: hit, miss-path (404), hit; answered in order
        get = f"GET /models/{sha} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode()
        unknown = f"GET /models/{'0' * 64} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode()
        answers = raw_exchange(port, get + unknown + get, expect=3)
        assert [a[0].split(b"\r\n")[0] for a in answers[:3]] == [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 404 Not Found",
            b"HTTP/1.1 200 OK",
        ]
        assert answers[0][1] == answers[2][1] == hit.content
        assert answers[3][0] == b"open"
        # Connection: close is honoured on a hit
        closing = b"POST /models?width=28 HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
        (head, body), state = raw_exchange(port, closing, expect=1)
        assert b"connection: close" in head.lower() and body == hit.content and state[0] == b"closed"
