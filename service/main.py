"""create_app(settings) and its lifespan: load the checkpoints once, open Redis, warm up, serve."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from neumeta_core import checkpoint
from service import errors
from service.cache import ModelStore, RedisTier
from service.config import Settings
from service.hotpath import serve_hit
from service.middleware import ACCESS_LOG, RequestGuard
from service.routes import router
from service.synthesis import Synthesizer

log = logging.getLogger("neumeta.service")


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("NEUMETA_DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def load_models(settings: Settings, device: torch.device) -> dict[str, checkpoint.Checkpoint]:
    """Checkpoints by name (the file's stem); the first is the default model."""
    models: dict[str, checkpoint.Checkpoint] = {}
    for path in settings.checkpoints:
        if path.stem in models:
            raise ValueError(f"two checkpoints are named {path.stem!r}: rename one file")
        try:
            ckpt = checkpoint.load(path, device)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load checkpoint {path}: {exc}") from exc
        if settings.samples is not None:
            ckpt.morph.samples = settings.samples
        models[path.stem] = ckpt
    return models


class App(FastAPI):
    """FastAPI, with cache hits answered before its middleware stack (service/hotpath.py): a hit costs
    a dictionary lookup and two sends instead of the framework's per-request work."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await serve_hit(self.state, scope, send):
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, models: dict[str, checkpoint.Checkpoint] | None = None) -> App:
    """The app; `models` already loaded (by `neumeta serve`, to fail before listening) are used
    as they are, otherwise the lifespan loads the configured checkpoints."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = resolve_device(settings.device)
        loaded = models if models is not None else load_models(settings, device)
        remote = None
        if settings.redis_url:
            remote = RedisTier(
                settings.redis_url, settings.redis_timeout, settings.redis_ttl, settings.redis_max_value_bytes
            )
        synth = Synthesizer(loaded, ModelStore(settings.cache_max_bytes, remote), settings)
        synth.warm_up()
        # The model, torch and the app are long-lived: move them out of the collector's way, so that a
        # full collection (triggered by per-request garbage) does not walk them (p99 latency under load).
        gc.collect()
        gc.freeze()
        app.state.synth = synth
        log.info("ready: %s on %s, redis %s", ", ".join(loaded), device, "on" if remote else "off")
        try:
            yield
        finally:
            ACCESS_LOG.flush()
            app.state.synth = None
            synth.close()
            if remote is not None:
                await remote.close()

    app = App(
        title="NeuMeta Serve",
        version="0.2.0",
        description="One NeuMeta hypernetwork, served as ONNX or safetensors models of any width.",
        lifespan=lifespan,
    )
    app.state.synth = None
    app.state.api_keys = tuple(k.get_secret_value().encode() for k in settings.api_keys)
    errors.install(app)
    app.include_router(router)
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes)
    return app
