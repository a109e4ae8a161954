"""Single flight and a Redis outage against a real server process (127.0.0.1 only).

    .venv/bin/python bench/redis_outage.py [--seconds 5] [--clients 16]

1. 32 concurrent cold requests for one width: syntheses and single-flight joins, from /metrics.
2. `--clients` clients loop over the served widths 8..32 for `--seconds`; Redis is killed after 1 s and
   restarted 2 s later. Prints every status code seen and the Redis errors counted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.service.conftest import RedisServer, metric, serving


async def _loop(c: httpx.AsyncClient, n: int, stop: float) -> list[int]:
    codes: list[int] = []
    while time.monotonic() < stop:
        r = await c.post("/models", params={"width": 8 + (n + len(codes)) % 25})  # every served width
        codes.append(r.status_code)
    return codes


async def _chaos(redis: RedisServer) -> None:
    await asyncio.sleep(1.0)
    redis.stop()
    await asyncio.sleep(2.0)
    redis.start()


async def run(url: str, redis: RedisServer, seconds: float, clients: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        before = (await c.get("/metrics")).text
        cold = await asyncio.gather(*(c.post("/models", params={"width": 19}) for _ in range(32)))
        after = (await c.get("/metrics")).text
        made = metric(after, "neumeta_syntheses_total") - metric(before, "neumeta_syntheses_total")
        joins = metric(after, "neumeta_singleflight_joins_total") - metric(before, "neumeta_singleflight_joins_total")
        print(
            f"32 cold requests: statuses {sorted({r.status_code for r in cold})}, {made:g} synthesis, {joins:g} joins"
        )
        stop = time.monotonic() + seconds
        results = await asyncio.gather(*(_loop(c, n, stop) for n in range(clients)), _chaos(redis))
        codes = [code for r in results[:-1] if r for code in r]
        errors = metric((await c.get("/metrics")).text, 'neumeta_redis_errors_total{op="get"}')
        counts = {code: codes.count(code) for code in sorted(set(codes))}
        print(f"{len(codes)} requests with Redis down 1 s..3 s: statuses {counts}; Redis get errors counted {errors:g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=16)
    args = p.parse_args()
    redis = RedisServer(Path(tempfile.mkdtemp()))
    redis.start()
    try:
        with serving(NEUMETA_REDIS_URL=redis.url, NEUMETA_REDIS_TIMEOUT="0.2") as live:
            asyncio.run(run(live.url, redis, args.seconds, args.clients))
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
