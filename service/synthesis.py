"""cache -> single flight -> worker thread -> neumeta_core -> cache."""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from neumeta_core import export
from neumeta_core.checkpoint import Checkpoint
from neumeta_core.sampling import ratio_for, width_for
from service import metrics
from service.cache import CacheKey, LRUCache
from service.errors import InvalidRequest, ServiceError

MAX_EXPORT_ERROR = 1e-4  # onnxruntime vs torch on the probe batch
EXPORTER_VERSION = "onnx-helper/1"


@dataclass(frozen=True)
class Artifact:
    body: bytes
    sha256: str
    width: int
    params: int
    ratio: float
    filename: str


class Synthesizer:
    """Turns a width into ONNX bytes, once per width: later requests are cache hits and
    concurrent requests for the same key share one job on the device's single worker."""

    def __init__(self, checkpoint: Checkpoint, cache: LRUCache[Artifact]) -> None:
        self.checkpoint = checkpoint
        self.cache = cache
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthesis")
        self._inflight: dict[CacheKey, asyncio.Future[Artifact]] = {}
        self._probe = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    @property
    def max_width(self) -> int:
        return self.checkpoint.target.max_width

    @property
    def max_ratio(self) -> float:
        return ratio_for(self.checkpoint.target.min_width, self.max_width)

    def ratio_hint(self) -> str:
        t = self.checkpoint.target
        return (
            f"ratio must be a number in [0, {self.max_ratio:g}]: the served width is "
            f"round((1 - ratio) * {t.max_width}) and must lie in {t.min_width}..{t.max_width}"
        )

    def width_for_ratio(self, ratio: float | None) -> int:
        """Validate a compression ratio at the boundary and turn it into a width."""
        if ratio is None:
            raise InvalidRequest(f"missing query parameter 'ratio'. {self.ratio_hint()}")
        if not 0.0 <= ratio <= self.max_ratio:  # also false for NaN
            raise InvalidRequest(f"ratio={ratio} is not supported. {self.ratio_hint()}")
        return width_for(ratio, self.max_width)

    async def get(self, width: int, fmt: str = "onnx") -> tuple[Artifact, bool]:
        """(artifact, cache hit?)"""
        key = CacheKey(self.checkpoint.digest + ":" + EXPORTER_VERSION, width, fmt)
        cached = self.cache.get(key)
        if cached is not None:
            metrics.CACHE.labels("hit").inc()
            return cached, True
        metrics.CACHE.labels("miss").inc()
        pending = self._inflight.get(key)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = asyncio.ensure_future(loop.run_in_executor(self._worker, self._build, width))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key, None))
        artifact = await asyncio.shield(pending)
        self.cache.put(key, artifact, len(artifact.body))
        return artifact, False

    def _build(self, width: int) -> Artifact:
        """Runs on the worker thread: synthesize, export, verify."""
        ckpt = self.checkpoint
        started = time.perf_counter()
        model = ckpt.morph.synthesize(width)
        synthesized = time.perf_counter()
        ratio = ratio_for(width, self.max_width)
        body = export.to_onnx(
            ckpt.target.family,
            model.state_dict(),
            {"neumeta.width": str(width), "neumeta.ratio": f"{ratio:g}", "neumeta.checkpoint": ckpt.digest},
        )
        exported = time.perf_counter()
        error = export.verify(body, model, self._probe)
        if not error <= MAX_EXPORT_ERROR:
            raise ServiceError(f"exported model differs from torch by {error:.2e}")
        metrics.STAGE.labels("synthesize").observe(synthesized - started)
        metrics.STAGE.labels("export").observe(exported - synthesized)
        metrics.STAGE.labels("verify").observe(time.perf_counter() - exported)
        return Artifact(
            body=body,
            sha256=hashlib.sha256(body).hexdigest(),
            width=width,
            params=ckpt.morph.param_count(width),
            ratio=ratio,
            filename=f"{ckpt.name}-w{width}.onnx",
        )

    def warm_up(self) -> None:
        """One synthesis before readiness, so the first request pays no first-call costs."""
        self._build(self.max_width)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
