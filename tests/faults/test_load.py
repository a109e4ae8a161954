"""Load and faults against real processes on 127.0.0.1: two replicas sharing one redis-server.

Bounded runs (seconds each) for `make test`; `make soak` runs the same scenarios longer (bench/soak.py).
Every scenario must end with 0 transport errors, 0 non-200 answers and 0 requests answered with two
different bodies, whichever replica answered and whether it came from a cache or a synthesis.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import threading
import time
from contextlib import ExitStack

import httpx

from tests.load import run_load
from tests.service.conftest import metric, serving

CLIENTS = int(os.environ.get("NEUMETA_LOAD_CLIENTS", "24"))  # `make soak`: 64
SECONDS = float(os.environ.get("NEUMETA_LOAD_SECONDS", "6"))  # `make soak`: 60


def syntheses(urls: list[str]) -> float:
    return sum(metric(httpx.get(f"{u}/metrics").text, "neumeta_syntheses_total") for u in urls)


def report(scenario: str, result, **extra) -> None:
    """One JSON line per scenario on stdout (`make soak` shows it; pytest keeps it otherwise)."""
    line = {"scenario": scenario, "clients": CLIENTS, "seconds": SECONDS, **result.summary(), **extra}
    print(json.dumps(line))


def assert_clean(result, shared_cache_lost: bool = False) -> None:
    assert result.errors == [], result.errors[:5]
    if shared_cache_lost:
        # A replica finds a model by content address only in its memory or in Redis: while Redis is down,
        # or after it restarts empty, GET /models/{sha256} on a replica that never made the model is the
        # documented 404 (POST /models again). Every size request must still succeed.
        lost = result.get_statuses.get(404, 0)
        assert result.non_200 == lost and set(result.get_statuses) <= {200, 404}, (result.statuses, result.get_statuses)
    else:
        assert result.non_200 == 0, result.statuses
    assert result.inconsistent == {}, result.inconsistent
    assert result.requests > 100, result.summary()


def test_mixed_load_on_two_replicas_is_error_free_and_byte_identical(redis_server):
    env = {"NEUMETA_REDIS_URL": redis_server.url}
    with serving(**env) as a, serving(**env) as b:
        urls = [a.url, b.url]
        result = asyncio.run(run_load(urls, CLIENTS, SECONDS))
        made = syntheses(urls)
    report("mixed load, two replicas", result, syntheses=made)
    assert_clean(result)
    distinct = len({sha for shas in result.bodies.values() for sha in shas})
    # single flight across replicas: each model made once (+ each replica's warm-up synthesis)
    assert made <= distinct + len(urls), (made, distinct)


def test_redis_killed_and_restarted_under_load(redis_server):
    env = {"NEUMETA_REDIS_URL": redis_server.url, "NEUMETA_REDIS_TIMEOUT": "0.2"}
    recovered: dict[str, float] = {}
    during: list[httpx.Response] = []

    with serving(**env) as a, serving(**env) as b:
        urls = [a.url, b.url]

        async def chaos() -> None:
            await asyncio.sleep(1.5)
            redis_server.stop()
            await asyncio.sleep(0.5)
            # models outside the load's mix: neither replica holds them, so each must ask Redis (down)
            async with httpx.AsyncClient(timeout=60) as http:
                for url, width in zip(urls, (19, 23), strict=True):
                    during.append(await http.post(f"{url}/models", params={"width": width}))
            await asyncio.sleep(1.0)
            redis_server.start()
            restarted = time.monotonic()
            async with httpx.AsyncClient(timeout=5) as http:
                for url in urls:  # how long until each replica uses Redis again
                    while time.monotonic() - restarted < 30:
                        if (await http.get(f"{url}/readyz")).json()["redis"] == "ok":
                            recovered[url] = time.monotonic() - restarted
                            break
                        await asyncio.sleep(0.05)

        result = asyncio.run(run_load(urls, CLIENTS, SECONDS, chaos))
        errors = sum(metric(httpx.get(f"{u}/metrics").text, 'neumeta_redis_errors_total{op="get"}') for u in urls)
    report("Redis killed and restarted", result, recovery_seconds=recovered)
    assert_clean(result, shared_cache_lost=True)
    assert errors >= 1, "the outage was not noticed"
    assert [r.status_code for r in during] == [200, 200]  # a miss while Redis is down is still served
    assert set(recovered) == set(urls), f"a replica did not use Redis again within 30 s: {recovered}"


def test_sigterm_under_load_lets_every_request_in_flight_finish():
    """Six slow syntheses (K = 150) queued on one worker and hits in between: SIGTERM arrives while
    they run; every request already sent completes with a correct model, then the process exits."""
    env = {"NEUMETA_SAMPLES": "150", "NEUMETA_SHUTDOWN_GRACE": "90", "NEUMETA_REQUEST_TIMEOUT": "120"}
    with ExitStack() as stack:
        live = stack.enter_context(serving(**env))
        answers: dict[int, httpx.Response | Exception] = {}

        def request(n: int, width: int) -> None:
            try:
                answers[n] = httpx.post(f"{live.url}/models", params={"width": width}, timeout=120)
            except httpx.HTTPError as exc:
                answers[n] = exc

        widths = [31, 29, 27, 25, 23, 32, 32, 32]  # six cold syntheses; 32 is warm (a hit)
        threads = [threading.Thread(target=request, args=(n, w)) for n, w in enumerate(widths)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # all sent; the first synthesis is under way, the others queued
        signalled = time.monotonic()
        live.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=150)
        code = live.proc.wait(timeout=120)
        drained = time.monotonic() - signalled
    line = {"scenario": "SIGTERM under load", "requests_in_flight": len(widths), "drain_seconds": round(drained, 2)}
    print(json.dumps(line))
    for n, width in enumerate(widths):
        r = answers[n]
        assert isinstance(r, httpx.Response), f"width {width}: {r!r}"
        assert r.status_code == 200 and r.headers["x-neumeta-width"] == str(width)
        assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
    assert code in (0, -signal.SIGTERM) and drained < 90
