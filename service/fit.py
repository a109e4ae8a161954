"""Fit on the device: the largest served model that meets this machine's own budgets.

`neumeta fetch --max-latency-ms X [--max-bytes N] [--threads T]` measures candidate models with onnxruntime
here (warm-up runs, then the median of repeated runs at batch 1), searching the served width range by bisection
(a model's time grows with its width), keeps the largest that meets every budget, prints the table it measured
and downloads only the winner through `service.client.fetch` (verified, atomic, resumable).

A candidate is known by its sha256 before any download: a HEAD request answers with the file's ETag and
length. Measurements are kept in a small JSON file keyed by the machine (CPU, cores, onnxruntime, threads) and
the file's sha256, so a rerun with the same budget measures nothing new. Light: httpx, numpy and onnxruntime,
never torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from service.client import FetchError, auth, error_of, reported

WARMUP = 5
REPEATS = 30


@dataclass
class Candidate:
    width: int
    sha256: str
    size: int  # bytes of the file as served
    params: int
    ms: float | None = None  # median time at batch 1, once measured
    cached: bool = False  # the time came from the local cache


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neumeta" / "latency.json"


def machine(threads: int) -> str:
    """What a measured time depends on besides the file: this CPU, its cores, onnxruntime and the threads."""
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [platform.system(), platform.machine(), cpu, str(os.cpu_count()), ort.__version__, f"threads={threads}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class Measurements:
    """{machine: {sha256: ms}} in one JSON file, rewritten atomically; an unreadable file starts afresh."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        try:
            data = json.loads(path.read_text())
            self.data: dict[str, dict[str, float]] = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self.data = {}

    def get(self, sha: str) -> float | None:
        value = self.data.get(self.key, {}).get(sha)
        return float(value) if isinstance(value, int | float) else None

    def put(self, sha: str, ms: float) -> None:
        self.data.setdefault(self.key, {})[sha] = ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        tmp.replace(self.path)


def latency_ms(body: bytes, shape: list[int], threads: int) -> float:
    """Median milliseconds of one batch-1 inference with onnxruntime on this machine's CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(body, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    for _ in range(WARMUP):
        session.run(None, {name: x})
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


@dataclass
class Search:
    url: str
    params: dict[str, str]  # model, format, dtype: what every candidate shares
    api_key: str | None
    threads: int
    cache: Measurements
    measure: Callable[[bytes, list[int], int], float] = latency_ms

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url.rstrip("/"), headers=auth(self.api_key), timeout=120.0)
        self.seen: dict[int, Candidate] = {}
        self.measured = 0

    def info(self) -> dict[str, object]:
        """The model's entry in GET /models: its served widths and its input."""
        with reported(self.url):
            r = self.client.get("/models")
        if r.status_code != 200:
            raise error_of(r)
        models = r.json()
        name = self.params.get("model")
        for entry in models:
            if name is None or entry["name"] == name:
                return dict(entry)
        raise FetchError(f"no model {name!r} on {self.url}; it serves {', '.join(m['name'] for m in models)}")

    def head(self, **size: str) -> httpx.Response:
        with reported(self.url):
            r = self.client.head("/models", params={**self.params, **size})
        if r.status_code != 200:
            with reported(self.url):  # HEAD has no body: the same GET says why
                r = self.client.get("/models", params={**self.params, **size})
            raise error_of(r)
        return r

    def candidate(self, width: int) -> Candidate:
        if width not in self.seen:
            r = self.head(width=str(width))
            sha, size = r.headers["etag"].strip('"'), int(r.headers["content-length"])
            self.seen[width] = Candidate(width, sha, size, int(r.headers["x-neumeta-params"]))
        return self.seen[width]

    def time(self, width: int, shape: list[int]) -> float:
        c = self.candidate(width)
        if c.ms is None:
            known = self.cache.get(c.sha256)
            if known is not None:
                c.ms, c.cached = known, True
            else:
                with reported(self.url):
                    r = self.client.get(f"/models/{c.sha256}")
                if r.status_code != 200:
                    raise error_of(r)
                if hashlib.sha256(r.content).hexdigest() != c.sha256:
                    raise FetchError(f"the bytes of width {width} do not match their sha256 {c.sha256}")
                c.ms = self.measure(r.content, shape, self.threads)
                self.measured += 1
                self.cache.put(c.sha256, c.ms)
        return c.ms

    def largest(self, max_latency_ms: float | None, max_bytes: int | None) -> Candidate:
        """The largest width that meets both budgets; FetchError saying what the smallest needs when none does."""
        entry = self.info()
        allowed = entry["widths_allowed"]
        assert isinstance(allowed, dict)
        low, high = int(allowed["min"]), int(allowed["max"])
        shape = [int(d) for d in entry["input"]["shape"][1:]]  # type: ignore[index]
        if max_bytes is not None:  # the server knows its files' lengths: the largest that fits, no download
            high = int(self.head(max_bytes=str(max_bytes)).headers["x-neumeta-width"])
        if max_latency_ms is None:
            return self.candidate(high)
        if self.time(low, shape) > max_latency_ms:
            c = self.seen[low]
            raise FetchError(
                f"no model meets --max-latency-ms {max_latency_ms:g} on this machine: the smallest (width {low}, "
                f"{c.size} bytes) takes {c.ms:.3f} ms at batch 1 with {self.threads} thread(s)"
            )
        if self.time(high, shape) <= max_latency_ms:
            return self.seen[high]
        while high - low > 1:  # invariant: `low` meets the budget, `high` does not
            mid = (low + high) // 2
            low, high = (mid, high) if self.time(mid, shape) <= max_latency_ms else (low, mid)
        return self.seen[low]

    def table(self, budget: float | None) -> str:
        rows = ["width  params     bytes        ms  source    fits"]
        for c in sorted(self.seen.values(), key=lambda c: c.width):
            ms = f"{c.ms:9.3f}" if c.ms is not None else "        -"
            source = "cached" if c.cached else ("measured" if c.ms is not None else "-")
            fits = "-" if c.ms is None or budget is None else ("yes" if c.ms <= budget else "no")
            rows.append(f"{c.width:5d} {c.params:7d} {c.size:9d} {ms}  {source:8s}  {fits}")
        return "\n".join(rows)

    def close(self) -> None:
        self.client.close()
