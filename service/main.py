"""create_app(settings) and its lifespan: open Redis, load the checkpoints, warm up, serve.

A model server's life: `/healthz` answers from the start, `/readyz` answers 503 until the checkpoints are
loaded and each model's full-width file is made (and cached), then 200. `neumeta serve` loads in the
background (`background=True`), so the port answers while a large checkpoint loads; in-process users
(tests, embedding) get a lifespan that returns once ready.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from neumeta_core import checkpoint
from neumeta_core.errors import InputError
from neumeta_core.hypernet import set_precision
from service import errors
from service.artifact import Policy
from service.cache import ModelStore, RedisTier
from service.config import Settings
from service.hotpath import serve_hit
from service.middleware import ACCESS_LOG, RequestGuard
from service.routes import router
from service.synthesis import Synthesizer

log = logging.getLogger("neumeta.service")
DOCS_ASSETS = "/docs/assets"  # Swagger UI, shipped in the swagger-ui-py package: /docs works offline


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise InputError("NEUMETA_DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def load_models(settings: Settings, device: torch.device) -> dict[str, checkpoint.Checkpoint]:
    """Checkpoints by name (the file's stem); the first is the default model. InputError naming the file."""
    models: dict[str, checkpoint.Checkpoint] = {}
    for path in settings.checkpoints:
        try:
            models[path.stem] = checkpoint.load(path, device)
        except InputError as exc:
            raise InputError(f"cannot load a checkpoint: {exc}") from None
    return models


class App(FastAPI):
    """FastAPI, with cache hits answered before its middleware stack (service/hotpath.py): a hit costs
    a dictionary lookup and two sends instead of the framework's per-request work."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await serve_hit(self.state, scope, send):
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    background: bool = False,
    on_failure: Callable[[Exception], None] | None = None,
) -> App:
    """The app. `background`: the lifespan returns at once and loads in a task (what `neumeta serve` does,
    so that it listens while loading); `on_failure(error)` is called if loading fails (the server stops).
    Without `background`, the lifespan raises the loading error itself."""
    settings = settings or Settings()
    made: list[Synthesizer] = []  # what the lifespan closes, ready or not

    async def load(app: FastAPI) -> None:
        device = resolve_device(settings.device)
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        set_precision(settings.precision)  # once per process: torch's TF32 switch is process-wide
        loaded = await asyncio.to_thread(load_models, settings, device)
        remote = None
        if settings.redis_url:
            remote = RedisTier(
                settings.redis_url, settings.redis_timeout, settings.redis_ttl, settings.redis_max_value_bytes
            )
        app.state.redis = remote
        policy = Policy(max_age=settings.max_age, vary_auth=bool(settings.api_keys))
        names = {c.digest: name for name, c in loaded.items()}
        synth = Synthesizer(loaded, ModelStore(settings.cache_max_bytes, remote, names, policy), settings)
        made.append(synth)
        await synth.warm_up()
        # The model, torch and the app are long-lived: move them out of the collector's way, so that a
        # full collection (triggered by per-request garbage) does not walk them (p99 latency under load).
        gc.collect()
        gc.freeze()
        app.state.synth = synth
        log.info("ready: %s on %s, redis %s", ", ".join(loaded), device, "on" if remote else "off")

    async def load_or_stop(app: FastAPI) -> None:
        try:
            await load(app)
        except Exception as exc:  # reported to `on_failure`: InputError as one line, a bug with its traceback
            if on_failure is None:
                raise
            on_failure(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(load_or_stop(app) if background else load(app))
        if not background:
            await task
        try:
            yield
        finally:
            ACCESS_LOG.flush()
            task.cancel()
            app.state.synth = None
            for synth in made:
                synth.close()
            if app.state.redis is not None:
                await app.state.redis.close()

    app = App(
        title="NeuMeta Serve",
        version="0.3.0",
        description="One NeuMeta hypernetwork, served as ONNX or safetensors models of any width.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.synth = app.state.redis = None
    app.state.api_keys = tuple(k.get_secret_value().encode() for k in settings.api_keys)
    errors.install(app)
    app.include_router(router)
    _docs(app)
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes)
    return app


def _docs(app: FastAPI) -> None:
    """Swagger UI at /docs from assets served here, never a CDN; 'Authorize' takes the bearer key."""
    app.mount(DOCS_ASSETS, StaticFiles(packages=[("swagger_ui", "static")]), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )
