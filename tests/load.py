"""A bounded load generator for the load and fault tests (`make test`) and the soak run (`make soak`).

Clients share a fixed number of requests over a mix of size requests (POST and the GET form) and
content-address GETs, each to one of the given servers (replicas sharing one Redis). Every answer is
recorded: its status, and for a 200 the sha256 of its body, so a run can prove that one request always
got the same bytes, from any replica, cached or not. A run is bounded by its request count, never by a
time, so a busy machine makes it slower, not different; faults are injected at given request counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import httpx

# size requests: ratios, widths, a budget, both formats and dtypes (and GET by content address)
MIX: list[dict[str, str]] = [
    *[{"ratio": f"{r:g}"} for r in (0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)],
    *[{"width": str(w)} for w in (9, 11, 13, 17, 21, 27, 31)],
    {"max_params": "20000"},
    {"ratio": "0.5", "format": "safetensors"},
    {"ratio": "0.25", "dtype": "float16"},
]


@dataclass
class LoadResult:
    statuses: dict[int, int] = field(default_factory=dict)
    get_statuses: dict[int, int] = field(default_factory=dict)  # of the GET /models/{sha256} among them
    bodies: dict[str, set[str]] = field(default_factory=dict)  # request -> sha256 of every body received
    errors: list[str] = field(default_factory=list)  # transport errors, with the request
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def non_200(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    @property
    def inconsistent(self) -> dict[str, set[str]]:
        """Requests answered with more than one body."""
        return {name: shas for name, shas in self.bodies.items() if len(shas) > 1}

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100)[int(q) - 1] if len(self.latencies) > 1 else self.latencies[0]

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "get_by_sha_statuses": {str(k): v for k, v in sorted(self.get_statuses.items())},
            "transport_errors": len(self.errors),
            "inconsistent_bodies": len(self.inconsistent),
            "p50_ms": round(self.percentile(50) * 1e3, 2),
            "p99_ms": round(self.percentile(99) * 1e3, 2),
        }


class Progress:
    """How many answers have come back; `reached(n)` waits for the n-th (to inject a fault mid-run)."""

    def __init__(self) -> None:
        self.done = 0
        self._waiting: list[tuple[int, asyncio.Event]] = []

    def tick(self) -> None:
        self.done += 1
        for n, event in self._waiting:
            if self.done >= n:
                event.set()

    async def reached(self, n: int) -> None:
        if self.done < n:
            event = asyncio.Event()
            self._waiting.append((n, event))
            await event.wait()


async def run_load(
    urls: list[str],
    clients: int,
    requests: int,
    chaos: Callable[[Progress], Awaitable[None]] | None = None,
    timeout: float = 120.0,
) -> LoadResult:
    """`requests` requests in all, from `clients` concurrent loops over MIX (as POST and as the GET form) and
    GET /models/{sha256}, spread over `urls`; `chaos(progress)` runs alongside (kill a Redis, signal a
    server) at the request counts it chooses."""
    result = LoadResult()
    known: dict[str, str] = {}  # sha256 -> the request that produced it, for content-address GETs
    progress = Progress()
    issued = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests:
            i = issued
            issued += 1
            url = urls[i % len(urls)]
            query = MIX[(i // 2) % len(MIX)]
            if i % 5 == 4 and known:
                sha = sorted(known)[i % len(known)]
                name, request = f"GET {sha[:12]}", http.get(f"{url}/models/{sha}")
            elif i % 2:  # the GET form answers the same bytes as POST: one name for both
                name, request = f"size {urlencode(query)}", http.get(f"{url}/models", params=query)
            else:
                name, request = f"size {urlencode(query)}", http.post(f"{url}/models", params=query)
            started = time.monotonic()
            try:
                r = await request
            except httpx.HTTPError as exc:
                result.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                progress.tick()
                continue
            progress.tick()
            result.latencies.append(time.monotonic() - started)
            result.statuses[r.status_code] = result.statuses.get(r.status_code, 0) + 1
            if name.startswith("GET"):
                result.get_statuses[r.status_code] = result.get_statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                sha = hashlib.sha256(r.content).hexdigest()
                result.bodies.setdefault(name, set()).add(sha)
                if r.headers.get("etag") != f'"{sha}"':
                    result.errors.append(f"{name}: ETag {r.headers.get('etag')} does not match the body {sha}")
                known.setdefault(sha, name)

    started = time.monotonic()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        tasks = [client(http) for _ in range(clients)]
        await asyncio.gather(*tasks, *([chaos(progress)] if chaos else []))
    result.seconds = time.monotonic() - started
    return result
