"""cache -> single flight -> worker thread -> neumeta_core -> cache.

In one process, concurrent requests for one file share one future. Across replicas, a Redis lock
lets one replica synthesise while the others poll Redis for its result, up to `lock_timeout`,
after which they synthesise themselves. The work runs on one worker thread per device.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from redis.asyncio.lock import Lock

from neumeta_core import export, files
from neumeta_core.checkpoint import Checkpoint
from neumeta_core.files import FileSpec
from neumeta_core.sampling import ratio_for, width_for
from service import metrics
from service.artifact import Artifact, key_of
from service.cache import ModelStore, RedisTier
from service.config import Settings
from service.errors import InvalidRequest, ModelNotFound, Overloaded, SynthesisTimeout
from service.hotpath import QueryMemo
from service.schemas import ModelRequest, shown

log = logging.getLogger("neumeta.synthesis")
POLL_SECONDS = 0.05


class Synthesizer:
    def __init__(self, models: dict[str, Checkpoint], store: ModelStore, settings: Settings) -> None:
        self.models = models
        self.default = next(iter(models))
        self.store = store
        self.settings = settings
        self._worker = ThreadPoolExecutor(max_workers=settings.max_concurrent, thread_name_prefix="synthesis")
        self._inflight: dict[str, asyncio.Future[Artifact]] = {}
        self.queries = QueryMemo()  # size-request query strings already resolved (service/hotpath.py)
        self._names = {c.digest: name for name, c in models.items()}
        self._probes = {name: c.probe() for name, c in models.items()}
        self._engines = {name: files.engine(c.morph.device) for name, c in models.items()}
        self._sizes: dict[tuple[str, int, str, str], int] = {}  # (checkpoint, width, format, dtype) -> bytes

    # -- validation at the boundary ------------------------------------------------------
    def checkpoint(self, name: str | None) -> Checkpoint:
        name = name or self.default
        if name not in self.models:
            raise ModelNotFound(f"no model {shown(name)}; loaded: {', '.join(self.models)} (GET /models lists them)")
        return self.models[name]

    @staticmethod
    def ratio_hint(ckpt: Checkpoint) -> str:
        t = ckpt.target
        top = ratio_for(t.min_width, t.max_width)
        return (
            f"ratio must be a number in [0, {top:g}]: the served width is "
            f"round((1 - ratio) * {t.max_width}) and must lie in {t.min_width}..{t.max_width}"
        )

    def request_hint(self) -> str:
        """What is valid, for the detail of a 422 (after the reason, which says what was wrong)."""
        ckpt = self.checkpoint(None)
        return (
            f"Give exactly one of ratio, width, max_params or max_bytes: {self.ratio_hint(ckpt)}; width must be "
            f"an integer in {ckpt.target.min_width}..{ckpt.target.max_width}; max_params at least "
            f"{ckpt.morph.param_count(ckpt.target.min_width)}; max_bytes at least the smallest file (onnx "
            f"float32: {self.file_size(ckpt, ckpt.target.min_width, 'onnx', 'float32')} bytes). Optional: model "
            f"({' | '.join(self.models)}), "
            f"format ({' | '.join(export.FORMATS)}), dtype ({' | '.join(export.DTYPES)})"
        )

    def resolve(self, req: ModelRequest) -> tuple[Checkpoint, int]:
        """The checkpoint and integer width a request asks for, or InvalidRequest saying why not."""
        ckpt = self.checkpoint(req.model)
        t = ckpt.target
        if req.dtype in export.QUANTIZED and req.format != "onnx":
            raise InvalidRequest(f"dtype={req.dtype} is served as format=onnx only (quantised), not {req.format}")
        if req.dtype in export.QUANTIZED and ckpt.calibration is None:
            raise InvalidRequest(
                f"dtype={req.dtype} needs calibration images, which {self.name(ckpt)} does not hold: ask for "
                "float32 or float16"
            )
        if req.ratio is not None:
            if not 0.0 <= req.ratio <= ratio_for(t.min_width, t.max_width):  # false for NaN too
                raise InvalidRequest(f"ratio={req.ratio} is not supported. {self.ratio_hint(ckpt)}")
            return ckpt, width_for(req.ratio, t.max_width)
        if req.width is not None:
            if not t.min_width <= req.width <= t.max_width:
                raise InvalidRequest(
                    f"width={req.width} is not supported: width must lie in {t.min_width}..{t.max_width}"
                )
            return ckpt, req.width
        if req.max_bytes is not None:
            return ckpt, self._fitting_bytes(ckpt, req.max_bytes, req.format, req.dtype)
        assert req.max_params is not None
        fits = [w for w in range(t.min_width, t.max_width + 1) if ckpt.morph.param_count(w) <= req.max_params]
        if not fits:
            smallest = ckpt.morph.param_count(t.min_width)
            raise InvalidRequest(f"max_params={req.max_params} fits no width: the smallest model has {smallest}")
        return ckpt, max(fits)

    async def locate(self, req: ModelRequest) -> tuple[Checkpoint, int]:
        """`resolve` off the event loop where it may have to learn files' lengths (a byte budget: an int8 file's
        length takes a quantisation), on the worker; at once otherwise."""
        if req.max_bytes is None:
            return self.resolve(req)
        return await asyncio.get_running_loop().run_in_executor(self._worker, self.resolve, req)

    def _fitting_bytes(self, ckpt: Checkpoint, budget: int, fmt: str, dtype: str) -> int:
        """The largest served width whose file is at most `budget` bytes: bisection, since a file grows with
        its width."""
        low, high = ckpt.target.min_width, ckpt.target.max_width
        smallest = self.file_size(ckpt, low, fmt, dtype)
        if budget < smallest:
            largest = self.file_size(ckpt, high, fmt, dtype)
            raise InvalidRequest(
                f"max_bytes={budget} fits no file: the {fmt} {dtype} files of {self.name(ckpt)} take {smallest} "
                f"(width {low}) to {largest} bytes (width {high}); give max_bytes >= {smallest}"
            )
        while low < high:  # invariant: the file at `low` fits
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.file_size(ckpt, mid, fmt, dtype) <= budget else (low, mid - 1)
        return low

    def file_size(self, ckpt: Checkpoint, width: int, fmt: str, dtype: str) -> int:
        """Bytes of the file this process serves at `width` (files.size: from shapes, nothing synthesised),
        kept once computed."""
        key = (ckpt.digest, width, fmt, dtype)
        if key not in self._sizes:
            self._sizes[key] = files.size(ckpt, self.spec(ckpt, width, fmt, dtype))
        return self._sizes[key]

    def spec(self, ckpt: Checkpoint, width: int, fmt: str = "onnx", dtype: str = "float32") -> FileSpec:
        """Everything the file's bytes depend on: this process's settings (K, precision) and engine."""
        return FileSpec(
            checkpoint=ckpt.digest,
            width=width,
            format=fmt,
            dtype=dtype,
            samples=self.settings.samples or ckpt.morph.samples,
            quadrature=ckpt.train.quadrature,
            precision=self.settings.precision,
            engine=self._engines[self._names[ckpt.digest]],
        )

    def name(self, ckpt: Checkpoint) -> str:
        return self._names[ckpt.digest]

    # -- the cached, single-flight path ----------------------------------------------------
    async def get(self, ckpt: Checkpoint, spec: FileSpec, query: bytes | None = None) -> tuple[Artifact, bool]:
        """(artifact, served from a cache?). `query`: the validated query string that asked for it,
        which the hot path then answers from memory (service/hotpath.py)."""
        key = spec.digest
        if query is not None:
            self.queries.remember(query, key_of(spec))
        cached = await self.store.get(spec)
        if cached is not None:
            return cached, True
        pending = self._inflight.get(key)
        if pending is not None:
            metrics.JOINS.inc()
        else:
            if len(self._inflight) >= self.settings.max_concurrent + self.settings.max_queue:
                metrics.REJECTED.labels("queue_full").inc()
                raise Overloaded(f"{len(self._inflight)} syntheses are under way; retry shortly")
            pending = asyncio.ensure_future(self._produce(spec, ckpt))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key, None))
        try:
            return await asyncio.wait_for(asyncio.shield(pending), self.settings.request_timeout), False
        except TimeoutError:
            raise SynthesisTimeout(f"synthesis took longer than {self.settings.request_timeout:g} s") from None

    async def _produce(self, spec: FileSpec, ckpt: Checkpoint) -> Artifact:
        remote = self.store.remote
        lock = remote.lock(key_of(spec), self.settings.lock_timeout) if remote else None
        owned = await remote.acquire(lock) if remote and lock else None
        try:
            if owned is False and remote and lock:  # another replica is on it: wait for its result
                artifact = await self._await_remote(spec, remote, lock)
                if artifact is not None:
                    return artifact
            artifact = await self.build(spec, ckpt)
            await self.store.put(artifact)
            return artifact
        finally:
            if owned and remote and lock:
                await remote.release(lock)

    async def build(self, spec: FileSpec, ckpt: Checkpoint) -> Artifact:
        """The file, made on the worker thread (the queue-depth gauge counts it until the worker starts)."""
        metrics.QUEUE.inc()
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._build, spec, ckpt)

    async def _await_remote(self, spec: FileSpec, remote: RedisTier, lock: Lock) -> Artifact | None:
        """The other replica's file from Redis; None (make it here) once the wait is pointless: Redis fails,
        or the lock is gone without a result (the other replica failed, or Redis restarted empty)."""
        deadline = time.monotonic() + self.settings.lock_timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            artifact = await self.store.get_remote(spec)
            if artifact is None and (remote.degraded or not await remote.held(lock)):
                # stored just before the lock was let go? one more look, unless Redis is failing
                artifact = None if remote.degraded else await self.store.get_remote(spec)
                if artifact is None:
                    metrics.REMOTE_WAITS.labels("abandoned").inc()
                    return None
            if artifact is not None:
                metrics.REMOTE_WAITS.labels("served").inc()
                return artifact
        metrics.REMOTE_WAITS.labels("timed_out").inc()
        return None

    def _build(self, spec: FileSpec, ckpt: Checkpoint) -> Artifact:
        """Runs on the worker thread: synthesize, serialize, verify (neumeta_core.files.build)."""
        metrics.QUEUE.dec()
        metrics.IN_FLIGHT.inc()
        try:
            built = files.build(ckpt, spec, self._probes[self.name(ckpt)])
        finally:
            metrics.IN_FLIGHT.dec()
        metrics.SYNTHESES.inc()
        for stage, seconds in built.seconds.items():
            metrics.STAGE.labels(stage).observe(seconds)
        return Artifact(
            spec=spec,
            body=built.body,
            sha256=hashlib.sha256(built.body).hexdigest(),
            model=self.name(ckpt),
            params=ckpt.morph.param_count(spec.width),
            ratio=ratio_for(spec.width, ckpt.target.max_width),
            policy=self.store.policy,
        )

    async def warm_up(self) -> None:
        """Before readiness: each model's full-width ONNX file made once, so that no request pays first-call
        costs, and kept in the cache, so that the first request for it is a hit."""
        for ckpt in self.models.values():
            spec = self.spec(ckpt, ckpt.target.max_width)
            await self.store.put(await self.build(spec, ckpt))
            served = list(range(ckpt.target.max_width, ckpt.target.min_width - 1, -1))
            samples = self.settings.samples or ckpt.morph.samples
            await asyncio.get_running_loop().run_in_executor(self._worker, ckpt.morph.prepare, served, samples)
            await asyncio.get_running_loop().run_in_executor(self._worker, self.listed_sizes, ckpt)

    def listed_sizes(self, ckpt: Checkpoint) -> dict[str, dict[int, int]]:
        """Bytes of the ONNX file at every served width, per unquantised dtype (what GET /models lists; an int8
        file's length takes a quantisation to know: HEAD its size request)."""
        widths = range(ckpt.target.min_width, ckpt.target.max_width + 1)
        return {
            d: {w: self.file_size(ckpt, w, "onnx", d) for w in widths}
            for d in export.DTYPES
            if d not in export.QUANTIZED
        }

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
