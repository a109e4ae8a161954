"""A real server process under concurrent load: Redis killed mid-run, SIGTERM mid-request."""

import asyncio
import signal
import threading
import time

import httpx

from tests.service.conftest import metric, serving


def test_redis_killed_mid_load_every_request_answers_200(redis_server):
    with serving(NEUMETA_REDIS_URL=redis_server.url, NEUMETA_REDIS_TIMEOUT="0.2") as live:

        async def client(c: httpx.AsyncClient, n: int, stop: float) -> list[int]:
            codes = []
            while time.monotonic() < stop:
                r = await c.post("/models", params={"width": 8 + (n + len(codes)) % 25})  # every served width
                codes.append(r.status_code)
            return codes

        async def chaos() -> None:
            await asyncio.sleep(0.7)
            redis_server.stop()
            await asyncio.sleep(1.0)
            redis_server.start()

        async def load() -> tuple[list[int], httpx.Response]:
            async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
                stop = time.monotonic() + 3.5
                results = await asyncio.gather(*(client(c, n, stop) for n in range(16)), chaos())
                for _ in range(100):  # Redis is back: the service notices within its back-off
                    ready = await c.get("/readyz")
                    if ready.json()["redis"] == "ok":
                        break
                    await asyncio.sleep(0.1)
                codes = [code for r in results[:-1] for code in r]  # type: ignore[union-attr]
                return codes, ready

        codes, ready = asyncio.run(load())
        errors = metric(httpx.get(f"{live.url}/metrics").text, 'neumeta_redis_errors_total{op="get"}')
    assert len(codes) > 50 and set(codes) == {200}
    assert errors >= 1  # the outage was seen and counted
    assert ready.json()["redis"] == "ok"


def test_sigterm_lets_the_in_flight_request_finish():
    # K = 150 noise samples make one synthesis take seconds, long enough to signal mid-request
    with serving(NEUMETA_SAMPLES="150", NEUMETA_SHUTDOWN_GRACE="60", NEUMETA_REQUEST_TIMEOUT="120") as live:
        result: dict[str, object] = {}

        def request() -> None:
            try:
                result["response"] = httpx.post(f"{live.url}/models", params={"width": 31}, timeout=120)
            except httpx.HTTPError as exc:
                result["error"] = exc

        worker = threading.Thread(target=request)
        worker.start()
        time.sleep(0.5)
        live.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = None
        try:
            httpx.get(f"{live.url}/healthz", timeout=2)
        except httpx.HTTPError as exc:
            refused = exc
        worker.join(timeout=120)
        code = live.proc.wait(timeout=60)
    response = result.get("response")
    assert isinstance(response, httpx.Response), result
    assert response.status_code == 200 and response.headers["x-neumeta-width"] == "31"
    assert refused is not None  # no new connections once shutting down
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
