"""cache -> single flight -> worker thread -> neumeta_core -> cache.

In one process, concurrent requests for one key share one future. Across replicas, a Redis lock
lets one replica synthesise while the others poll Redis for its result, up to `lock_timeout`,
after which they synthesise themselves. The work runs on one worker thread per device.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from neumeta_core import export
from neumeta_core.checkpoint import Checkpoint
from neumeta_core.sampling import ratio_for, width_for
from service import metrics
from service.cache import Artifact, CacheKey, ModelStore
from service.config import Settings
from service.errors import InvalidRequest, ModelNotFound, Overloaded, ServiceError, SynthesisTimeout
from service.hotpath import QueryMemo
from service.schemas import ModelRequest

log = logging.getLogger("neumeta.synthesis")
MAX_EXPORT_ERROR = 1e-4  # the file vs the torch model on the probe batch
POLL_SECONDS = 0.05


class Synthesizer:
    def __init__(self, models: dict[str, Checkpoint], store: ModelStore, settings: Settings) -> None:
        self.models = models
        self.default = next(iter(models))
        self.store = store
        self.settings = settings
        self._worker = ThreadPoolExecutor(max_workers=settings.max_concurrent, thread_name_prefix="synthesis")
        self._inflight: dict[CacheKey, asyncio.Future[Artifact]] = {}
        self.queries = QueryMemo()  # POST /models query strings already resolved (service/hotpath.py)
        self._probes = {  # one fixed input batch per model, in its family's input shape
            name: torch.rand(8, *c.morph.family.input_shape, generator=torch.Generator().manual_seed(0))
            for name, c in models.items()
        }

    # -- validation at the boundary ------------------------------------------------------
    def checkpoint(self, name: str | None) -> Checkpoint:
        name = name or self.default
        if name not in self.models:
            raise ModelNotFound(f"no model {name!r}; loaded: {', '.join(self.models)} (GET /models lists them)")
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
            f"{self.ratio_hint(ckpt)}; width must be an "
            f"integer in {ckpt.target.min_width}..{ckpt.target.max_width}; max_params at least "
            f"{ckpt.morph.param_count(ckpt.target.min_width)}. format: {' | '.join(export.FORMATS)}; "
            f"dtype: {' | '.join(export.DTYPES)}"
        )

    def resolve(self, req: ModelRequest) -> tuple[Checkpoint, int]:
        """The checkpoint and integer width a request asks for, or InvalidRequest saying why not."""
        ckpt = self.checkpoint(req.model)
        t = ckpt.target
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
        assert req.max_params is not None
        fits = [w for w in range(t.min_width, t.max_width + 1) if ckpt.morph.param_count(w) <= req.max_params]
        if not fits:
            smallest = ckpt.morph.param_count(t.min_width)
            raise InvalidRequest(f"max_params={req.max_params} fits no width: the smallest model has {smallest}")
        return ckpt, max(fits)

    def key(self, ckpt: Checkpoint, width: int, fmt: str, dtype: str) -> CacheKey:
        return CacheKey(ckpt.digest, width, fmt, dtype, self.settings.precision)

    # -- the cached, single-flight path ----------------------------------------------------
    async def get(
        self, ckpt: Checkpoint, width: int, fmt: str, dtype: str, query: bytes | None = None
    ) -> tuple[Artifact, bool]:
        """(artifact, served from a cache?). `query`: the validated query string that asked for it,
        which the hot path then answers from memory (service/hotpath.py)."""
        key = self.key(ckpt, width, fmt, dtype)
        if query is not None:
            self.queries.remember(query, key)
        cached = await self.store.get(key)
        if cached is not None:
            return cached, True
        pending = self._inflight.get(key)
        if pending is not None:
            metrics.JOINS.inc()
        else:
            if len(self._inflight) >= self.settings.max_concurrent + self.settings.max_queue:
                metrics.REJECTED.labels("queue_full").inc()
                raise Overloaded(f"{len(self._inflight)} syntheses are under way; retry shortly")
            pending = asyncio.ensure_future(self._produce(key, ckpt))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key, None))
        try:
            return await asyncio.wait_for(asyncio.shield(pending), self.settings.request_timeout), False
        except TimeoutError:
            raise SynthesisTimeout(f"synthesis took longer than {self.settings.request_timeout:g} s") from None

    async def _produce(self, key: CacheKey, ckpt: Checkpoint) -> Artifact:
        remote = self.store.remote
        lock = remote.lock(key, self.settings.lock_timeout) if remote else None
        owned = await remote.acquire(lock) if remote and lock else None
        try:
            if owned is False:  # another replica is on it: wait for its result
                artifact = await self._await_remote(key)
                if artifact is not None:
                    return artifact
            loop = asyncio.get_running_loop()
            metrics.QUEUE.inc()  # until the worker picks it up
            artifact = await loop.run_in_executor(self._worker, self._build, key, ckpt)
            await self.store.put(artifact)
            return artifact
        finally:
            if owned and remote and lock:
                await remote.release(lock)

    async def _await_remote(self, key: CacheKey) -> Artifact | None:
        deadline = time.monotonic() + self.settings.lock_timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            artifact = await self.store.get_remote(key)
            if artifact is not None:
                metrics.REMOTE_WAITS.labels("served").inc()
                return artifact
        metrics.REMOTE_WAITS.labels("timed_out").inc()
        return None

    def _build(self, key: CacheKey, ckpt: Checkpoint) -> Artifact:
        """Runs on the worker thread: synthesize, serialize, verify."""
        metrics.QUEUE.dec()
        metrics.IN_FLIGHT.inc()
        try:
            return self._synthesize(key, ckpt)
        finally:
            metrics.IN_FLIGHT.dec()

    def _synthesize(self, key: CacheKey, ckpt: Checkpoint) -> Artifact:
        started = time.perf_counter()
        state = ckpt.morph.state_dict(key.width, key.precision)
        synthesized = time.perf_counter()
        ratio = ratio_for(key.width, ckpt.target.max_width)
        meta = {"neumeta.width": str(key.width), "neumeta.ratio": f"{ratio:g}", "neumeta.checkpoint": ckpt.digest}
        if key.precision != "float32":
            meta["neumeta.precision"] = key.precision
        body = export.serialize(ckpt.target.family, state, key.format, key.dtype, meta)
        exported = time.perf_counter()
        error = self._verify(body, key, ckpt, state)
        if not error <= MAX_EXPORT_ERROR:
            raise ServiceError(f"the exported {key.format} model differs from torch by {error:.2e}")
        metrics.SYNTHESES.inc()
        metrics.STAGE.labels("synthesize").observe(synthesized - started)
        metrics.STAGE.labels("export").observe(exported - synthesized)
        metrics.STAGE.labels("verify").observe(time.perf_counter() - exported)
        return Artifact(
            body=body,
            sha256=hashlib.sha256(body).hexdigest(),
            model=self._name(ckpt),
            checkpoint=ckpt.digest,
            width=key.width,
            params=ckpt.morph.param_count(key.width),
            ratio=ratio,
            format=key.format,
            dtype=key.dtype,
            precision=key.precision,
        )

    def _verify(self, body: bytes, key: CacheKey, ckpt: Checkpoint, state: dict[str, torch.Tensor]) -> float:
        if key.format == "safetensors":
            return export.verify_safetensors(body, state, key.dtype)
        model = ckpt.morph.family.build(ckpt.target, key.width).to(ckpt.morph.device)
        model.load_state_dict(export.rounded(state, key.dtype))
        return export.verify(body, model.eval(), self._probes[self._name(ckpt)])

    def _name(self, ckpt: Checkpoint) -> str:
        return next(name for name, c in self.models.items() if c is ckpt)

    def warm_up(self) -> None:
        """One synthesis per model before readiness, so no request pays first-call costs."""
        for ckpt in self.models.values():
            self._synthesize(self.key(ckpt, ckpt.target.max_width, "onnx", "float32"), ckpt)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
