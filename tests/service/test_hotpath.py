"""The hot path (service/hotpath.py) answers exactly as FastAPI would, only hits, and nothing a client sends
can break a connection or grow its memory.

Each hit is compared with FastAPI's own answer to the same request, forced down the slow path by an
If-Match header that names the file (a condition that holds, which the hot path declines): status,
headers (but the date) and body must be equal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import threading
from dataclasses import replace

import httpx

from service.config import Settings
from service.hotpath import QueryMemo
from service.main import create_app
from tests.service.conftest import metric, running, serving


def slow(etag: str) -> dict[str, str]:
    return {"if-match": etag}  # holds, so FastAPI answers 200; the hot path never takes a conditional request


def comparable(r: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in r.headers.items() if k not in ("date", "x-neumeta-cache")}
    return r.status_code, headers, r.content


def test_query_memo_is_bounded_in_bytes_and_keeps_the_recent():
    memo = QueryMemo(max_bytes=2000, max_query=64)
    for n in range(100):
        memo.remember(f"width={n}".encode(), "k" * 60)
        assert memo.bytes <= 2000
    assert 0 < len(memo) < 100 and memo.get(b"width=99") == "k" * 60 and memo.get(b"width=0") is None
    before = (len(memo), memo.bytes)
    memo.remember(b"ratio=0.25" + b"0" * 60_000, "k")  # longer than any valid query needs: not kept
    assert (len(memo), memo.bytes) == before


def test_in_process_hits_match_fastapi_and_are_logged(caplog):
    caplog.set_level(logging.INFO, logger="neumeta.access")

    async def scenario() -> None:
        async with running(create_app(Settings(device="cpu"))) as c:
            miss = await c.post("/models?width=20")
            hit = await c.post("/models?width=20")
            etag = hit.headers["etag"]
            assert miss.headers["x-neumeta-cache"] == "miss" and hit.headers["x-neumeta-cache"] == "hit"
            assert comparable(hit) == comparable(await c.post("/models?width=20", headers=slow(etag)))
            assert comparable(hit) == comparable(miss)
            get_hit = await c.get("/models?width=20")  # the GET form shares the memo and the headers
            assert get_hit.headers["x-neumeta-cache"] == "hit" and comparable(get_hit) == comparable(hit)
            sha = etag.strip('"')
            by_sha = await c.get(f"/models/{sha}")
            assert comparable(by_sha) == comparable(await c.get(f"/models/{sha}", headers=slow(etag)))
            assert hashlib.sha256(by_sha.content).hexdigest() == sha
            # what the hot path must never answer: a different query, a range, a body, HEAD
            assert (await c.post("/models?width=21")).headers["x-neumeta-cache"] == "miss"
            partial = await c.get(f"/models/{sha}", headers={"range": "bytes=0-9"})
            assert partial.status_code == 206 and partial.content == hit.content[:10]
            head = await c.head("/models?width=20")
            assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == etag
            assert head.headers["content-length"] == str(len(hit.content))
            assert (await c.post("/models?width=99")).status_code == 422
            text = (await c.get("/metrics")).text
            labels = 'method="GET",route="/models/{sha256}",status_class="2xx"'
            assert metric(text, f"neumeta_http_request_duration_seconds_count{{{labels}}}") >= 2
            assert metric(text, "neumeta_bytes_served_total") >= 5 * len(hit.content)

    asyncio.run(scenario())
    lines = [json.loads(line) for r in caplog.records if r.name == "neumeta.access" for line in r.message.split("\n")]
    hits = [line for line in lines if line["cache"] == "hit" and line["route"] in ("/models", "/models/{sha256}")]
    assert len(hits) >= 3 and all(line["status"] == 200 and line["ms"] >= 0 for line in hits)


def test_a_digest_whose_entry_changed_is_never_answered():
    """The hot path checks the sha256 it answers by; a replaced entry's old digest is a 404."""

    async def scenario() -> None:
        async with running(create_app(Settings(device="cpu"))) as c:
            made = await c.get("/models?width=12")
            old = made.headers["etag"].strip('"')
            store = c._transport.app.state.synth.store  # type: ignore[attr-defined]
            artifact = store.local_by_sha(old)
            body = artifact.body + b"\0"
            store.remember(replace(artifact, body=body, sha256=hashlib.sha256(body).hexdigest()))
            gone = await c.get(f"/models/{old}")
            assert gone.status_code == 404 and gone.json()["error"] == "not_found"

    asyncio.run(scenario())


def test_long_query_strings_are_served_but_not_remembered():
    async def scenario() -> None:
        async with running(create_app(Settings(device="cpu"))) as c:
            memo = c._transport.app.state.synth.queries  # type: ignore[attr-defined]
            before = len(memo)
            for n in range(20):
                long = await c.get("/models?ratio=0.25" + "0" * (60_000 + n))  # valid: 0.25000…
                assert long.status_code == 200 and long.headers["x-neumeta-width"] == "24"
            assert len(memo) == before

    asyncio.run(scenario())


def test_api_keys_hold_on_the_hot_path():
    async def scenario() -> None:
        async with running(create_app(Settings(device="cpu", api_keys="k1,k2"))) as c:
            good = {"authorization": "Bearer k2"}
            assert (await c.post("/models?width=12", headers=good)).headers["x-neumeta-cache"] == "miss"
            hit = await c.post("/models?width=12", headers=good)
            assert hit.status_code == 200 and hit.headers["x-neumeta-cache"] == "hit"
            assert hit.headers["vary"] == "Authorization"  # a shared cache keeps one answer per key
            sha = hit.headers["etag"].strip('"')
            for headers in ({}, {"authorization": "Bearer k3"}, {"authorization": "Basic k2"}):
                assert (await c.post("/models?width=12", headers=headers)).status_code == 401
                assert (await c.get(f"/models/{sha}", headers=headers)).status_code == 401
            assert (await c.get(f"/models/{sha}", headers=good)).content == hit.content

    asyncio.run(scenario())


def read_responses(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """`count` HTTP/1.1 responses, framed by Content-Length: [(head, body)]."""
    out, buf = [], b""
    for _ in range(count):
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(1 << 16)
            assert chunk, f"connection closed after {len(out)} answers"
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        fields = dict(h.split(b": ", 1) for h in head.split(b"\r\n")[1:])
        length = int(fields[b"content-length"])
        while len(buf) < length:
            chunk = sock.recv(1 << 16)
            assert chunk, f"connection closed inside answer {len(out) + 1}"
            buf += chunk
        out.append((head, buf[:length]))
        buf = buf[length:]
    return out


def test_a_thousand_hits_pipelined_behind_a_slow_request_all_answered(tmp_path):
    """One connection: a cold synthesis (K = 60: seconds), then 1,000 hits sent at once behind it. Every
    request is answered, in order, and the server logs no traceback."""
    log = tmp_path / "server.log"
    with serving(log=log, NEUMETA_SAMPLES="60", NEUMETA_REQUEST_TIMEOUT="300") as live:
        made = httpx.get(f"{live.url}/models?width=8", timeout=300)
        sha = made.headers["etag"].strip('"')
        cold = b"GET /models?width=31 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
        hits = [
            (f"GET /models/{sha}" if n % 2 else "GET /models?width=8").encode() + b" HTTP/1.1\r\nhost: x\r\n\r\n"
            for n in range(1000)
        ]
        with socket.create_connection(("127.0.0.1", live.port), timeout=300) as s:
            sender = threading.Thread(target=s.sendall, args=(cold + b"".join(hits),))
            sender.start()  # sent while answers are read: neither side's buffers can fill and stall the other
            answers = read_responses(s, 1001)
            sender.join()
        first, rest = answers[0], answers[1:]
        assert first[0].startswith(b"HTTP/1.1 200") and b"x-neumeta-width: 31" in first[0]
        assert len(rest) == 1000 and all(head.startswith(b"HTTP/1.1 200") for head, _ in rest)
        assert all(body == made.content for _, body in rest)
        assert httpx.get(f"{live.url}/healthz").status_code == 200  # still serving
    assert "Traceback" not in live.stderr() and "RecursionError" not in live.stderr()


def test_connection_close_is_honoured_on_a_hit():
    with serving() as live:
        httpx.get(f"{live.url}/models?width=28")
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as s:
            s.sendall(b"GET /models?width=28 HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            [(head, body)] = read_responses(s, 1)
            s.settimeout(10)
            assert s.recv(1) == b""  # closed by the server
        assert b"connection: close" in head.lower() and b"x-neumeta-cache: hit" in head.lower()
        assert hashlib.sha256(body).hexdigest() in head.decode()
