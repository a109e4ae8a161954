"""Real server processes: replicas with different settings on one Redis, Redis killed mid-load, SIGTERM
mid-request. Every run is a fixed number of requests; waits are bounded only against a hang."""

import asyncio
import hashlib
import signal
import threading
import time

import httpx

from tests.service.conftest import metric, serving

HANG = 120.0  # seconds: a bound against a hang, never a measure of speed


def wait_for(condition, what: str, timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"  # timing-ok: against a hang
        time.sleep(0.05)


def test_replicas_with_another_k_on_one_redis_each_serve_their_own_bytes(redis_server):
    """A rollout that changes NEUMETA_SAMPLES: both replicas share Redis, neither answers the other's file,
    and GET /models/{sha256} never answers bytes of another digest. A third, fresh process with the first
    one's settings makes exactly the first one's bytes (safetensors included)."""
    env = {"NEUMETA_REDIS_URL": redis_server.url}
    with serving(**env) as a, serving(**env, NEUMETA_SAMPLES="1") as b:
        answers = {}
        for fmt in ("onnx", "safetensors"):
            ra = httpx.get(f"{a.url}/models", params={"ratio": 0.5, "format": fmt}, timeout=HANG)
            rb = httpx.get(f"{b.url}/models", params={"ratio": 0.5, "format": fmt}, timeout=HANG)
            assert ra.status_code == rb.status_code == 200
            assert ra.headers["x-neumeta-spec"] != rb.headers["x-neumeta-spec"] and ra.content != rb.content
            assert rb.headers["x-neumeta-cache"] == "miss"  # not A's entry under a shared key
            answers[fmt] = (ra, rb)
        for ra, rb in answers.values():
            for r in (ra, rb):
                sha = hashlib.sha256(r.content).hexdigest()
                for server in (a, b):  # either replica, by content address: those bytes or none
                    got = httpx.get(f"{server.url}/models/{sha}", timeout=HANG)
                    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha
    with serving() as fresh:  # no Redis: it makes the file itself
        again = httpx.get(f"{fresh.url}/models", params={"ratio": 0.5, "format": "safetensors"}, timeout=HANG)
    assert again.headers["x-neumeta-cache"] == "miss"
    assert again.content == answers["safetensors"][0].content


def test_redis_killed_mid_load_every_request_answers_200(redis_server):
    """16 clients, 10 requests each; Redis is stopped after the 5th answer and restarted after the 80th."""
    with serving(NEUMETA_REDIS_URL=redis_server.url, NEUMETA_REDIS_TIMEOUT="0.2") as live:
        done = 0
        stopped, restarted = asyncio.Event(), asyncio.Event()
        probe: list[httpx.Response] = []

        async def client(c: httpx.AsyncClient, n: int) -> list[int]:
            nonlocal done
            codes = []
            for i in range(10):
                r = await c.get("/models", params={"width": 8 + (n + i) % 13})
                codes.append(r.status_code)
                done += 1
                if done == 5:
                    stopped.set()
                if done == 80:
                    restarted.set()
            return codes

        async def chaos(c: httpx.AsyncClient) -> None:
            await stopped.wait()
            redis_server.stop()
            probe.append(await c.get("/models", params={"width": 31}))  # outside the mix: it must ask Redis
            await restarted.wait()
            redis_server.start()

        async def load() -> tuple[list[int], str]:
            async with httpx.AsyncClient(base_url=live.url, timeout=HANG) as c:
                results = await asyncio.gather(*(client(c, n) for n in range(16)), chaos(c))
                deadline = time.monotonic() + HANG
                while (await c.get("/readyz")).json()["redis"] != "ok":  # the back-off ends; Redis is used
                    assert time.monotonic() < deadline, "Redis was not used again"  # timing-ok: against a hang
                    await asyncio.sleep(0.1)
                return [code for r in results[:-1] for code in r], "ok"  # type: ignore[union-attr]

        codes, redis = asyncio.run(load())
        errors = metric(httpx.get(f"{live.url}/metrics").text, 'neumeta_redis_errors_total{op="get"}')
    assert len(codes) == 160 and set(codes) == {200}
    assert [r.status_code for r in probe] == [200]  # a miss while Redis is down is still made and served
    assert errors >= 1 and redis == "ok"  # the outage was seen and counted, and it ended


def test_sigterm_lets_the_in_flight_request_finish():
    # K = 60 noise samples make one synthesis take seconds: SIGTERM arrives while it runs
    with serving(NEUMETA_SAMPLES="60", NEUMETA_SHUTDOWN_GRACE="300", NEUMETA_REQUEST_TIMEOUT="300") as live:
        result: dict[str, object] = {}

        def request() -> None:
            try:
                result["response"] = httpx.post(f"{live.url}/models", params={"width": 31}, timeout=HANG * 3)
            except httpx.HTTPError as exc:
                result["error"] = exc

        def in_flight() -> bool:
            return metric(httpx.get(f"{live.url}/metrics").text, "neumeta_syntheses_in_flight") == 1

        worker = threading.Thread(target=request)
        worker.start()
        wait_for(in_flight, "the synthesis started")
        live.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                httpx.get(f"{live.url}/healthz", timeout=2)
            except httpx.HTTPError:
                return True
            return False

        wait_for(refused, "new connections refused once shutting down")
        worker.join(timeout=HANG * 3)
        code = live.proc.wait(timeout=HANG * 3)
    response = result.get("response")
    assert isinstance(response, httpx.Response), result
    assert response.status_code == 200 and response.headers["x-neumeta-width"] == "31"
    assert response.headers["etag"] == f'"{hashlib.sha256(response.content).hexdigest()}"'
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
