"""create_app(settings) and its lifespan: load the checkpoint once, warm up, serve."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from neumeta_core import checkpoint
from service import errors
from service.cache import LRUCache
from service.config import Settings
from service.routes import router
from service.synthesis import Synthesizer

log = logging.getLogger("neumeta.service")


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("NEUMETA_DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = resolve_device(settings.device)
        ckpt = checkpoint.load(settings.checkpoint, device)
        if settings.samples is not None:
            ckpt.morph.samples = settings.samples
        synth = Synthesizer(ckpt, LRUCache(settings.cache_max_bytes))
        synth.warm_up()
        app.state.request_hint = synth.ratio_hint()
        app.state.synth = synth
        log.info("loaded %s (%s) on %s", settings.checkpoint, ckpt.digest[:12], device)
        try:
            yield
        finally:
            app.state.synth = None
            synth.close()

    app = FastAPI(title="NeuMeta Serve", version="0.1.0", lifespan=lifespan)
    app.state.synth = None
    errors.install(app)
    app.include_router(router)
    return app
