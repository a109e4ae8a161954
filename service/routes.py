"""Thin handlers: decode the request, call the synthesizer, encode the answer.

`GET /models?ratio=0.25` is the cacheable form of `POST /models?ratio=0.25`: the same bytes and headers,
a strong ETag, `Cache-Control: public, max-age=NEUMETA_MAX_AGE`, 304 for a matching If-None-Match. HEAD
works wherever GET does (service/middleware.py routes it as GET and sends the headers without the body).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from neumeta_core import export
from neumeta_core.sampling import ratio_for
from service import metrics
from service.artifact import Artifact
from service.conditional import NOT_MODIFIED, byte_range, precondition
from service.errors import InvalidRequest, ModelNotFound, NotReady, Unauthorized
from service.hotpath import authorized
from service.schemas import (
    ERROR_RESPONSES,
    Health,
    InputSpec,
    ModelInfo,
    ModelRequest,
    TrainedWidths,
    WidthRange,
    json_params,
    query_params,
    shown,
    validate,
)
from service.synthesis import Synthesizer

router = APIRouter()
SHA256 = "^[0-9a-f]{64}$"
HEX = frozenset("0123456789abcdef")
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="a key of NEUMETA_API_KEYS; needed only when the service has keys",
)


def synthesizer(request: Request) -> Synthesizer:
    synth: Synthesizer | None = getattr(request.app.state, "synth", None)
    if synth is None:
        raise NotReady("the checkpoints are still loading: retry after the Retry-After seconds (GET /readyz)")
    return synth


def require_key(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> None:
    """Bearer keys compared in constant time (the hot path's check); no keys configured: no authentication."""
    keys: tuple[bytes, ...] = request.app.state.api_keys
    header = request.headers.get("authorization")
    if keys and not authorized(header.encode("latin-1") if header else None, keys):
        raise Unauthorized("this route needs an API key: send 'Authorization: Bearer <key>'")


Synth = Annotated[Synthesizer, Depends(synthesizer)]
Authorized = [Depends(require_key)]


def _query_parameters() -> list[dict[str, Any]]:
    """ModelRequest's fields as OpenAPI query parameters (the handlers parse the query string themselves,
    with the same model as the JSON body)."""
    schema = ModelRequest.model_json_schema()
    return [
        {"name": name, "in": "query", "required": False, "schema": prop, "description": prop.get("description", "")}
        for name, prop in schema["properties"].items()
    ]


QUERY = _query_parameters()
FILE = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
SIZE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": FILE, "description": "the model file"},
    304: {"description": "If-None-Match matched (GET, HEAD): the client already has these bytes"},
    **ERROR_RESPONSES,
}


def is_head(request: Request) -> bool:
    """A HEAD request, which service/middleware.py routes as GET: no body goes out."""
    return bool(request.scope.get("neumeta.head"))


def file_headers(artifact: Artifact, cached: bool) -> dict[str, str]:
    return {**artifact.headers, "X-NeuMeta-Cache": "hit" if cached else "miss"}


async def size_answer(request: Request, synth: Synthesizer, params: dict[str, Any], query: bytes | None) -> Response:
    """The file a size request names, with the conditional rules of RFC 9110 (service/conditional.py)."""
    req = validate(params, synth.request_hint)
    ckpt, width = await synth.locate(req)
    artifact, cached = await synth.get(ckpt, synth.spec(ckpt, width, req.format, req.dtype), query)
    headers = file_headers(artifact, cached)
    h = request.headers
    if precondition(request.method, h.get("if-match"), h.get("if-none-match"), artifact.etag) == NOT_MODIFIED:
        return Response(status_code=304, headers=headers)
    if not is_head(request):
        metrics.BYTES.inc(len(artifact.body))
    return Response(artifact.body, media_type=artifact.media_type, headers=headers)


@router.get(
    "/models",
    dependencies=Authorized,
    response_model=None,
    responses={
        200: {
            "model": list[ModelInfo],  # the JSON answer, its schemas in components
            "content": FILE,
            "description": "without parameters: the loaded checkpoints (JSON); with a size: the model file",
        },
        304: SIZE_RESPONSES[304],
        **ERROR_RESPONSES,
    },
    openapi_extra={"parameters": QUERY},
    summary="List the loaded checkpoints, or (given a size) download a model: the cacheable form of POST",
)
async def get_models(request: Request, synth: Synth) -> Any:
    query = request.scope["query_string"]
    params = query_params(query)
    if not params:
        return list_models(synth)
    return await size_answer(request, synth, params, query)


@router.post(
    "/models",
    response_class=Response,
    dependencies=Authorized,
    responses=SIZE_RESPONSES,
    openapi_extra={
        "parameters": QUERY,
        "requestBody": {
            "required": False,
            "description": "the same parameters as JSON, instead of the query string",
            "content": {"application/json": {"schema": ModelRequest.model_json_schema()}},
        },
    },
    summary="Synthesize a model of the requested size and download it",
)
async def create_model(request: Request, synth: Synth) -> Response:
    query = request.scope["query_string"]
    params = query_params(query)
    body = await request.body()  # read whole, within NEUMETA_MAX_BODY_BYTES (service/middleware.py)
    if not body:
        return await size_answer(request, synth, params, query)
    if params:
        raise InvalidRequest("give the parameters either in the query string or in a JSON body, not both")
    return await size_answer(request, synth, json_params(body, request.headers.get("content-type")), None)


@router.get(
    "/models/{sha256}",
    response_class=Response,
    dependencies=Authorized,
    responses={
        200: {"content": FILE, "description": "the model file"},
        206: {"content": FILE, "description": "the requested byte range"},
        304: {"description": "If-None-Match matched"},
        416: {"description": "the range lies outside the file"},
        **ERROR_RESPONSES,
    },
    openapi_extra={
        "parameters": [
            {
                "name": "sha256",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": SHA256},
                "description": "sha256 of the file, from the ETag or Location of a size request",
            }
        ]
    },
    summary="Download a generated model by its sha256 (immutable; supports ETag and Range)",
)
async def get_model(request: Request, synth: Synth, sha256: str) -> Response:
    if len(sha256) != 64 or not HEX.issuperset(sha256):
        raise InvalidRequest(
            f"{shown(sha256)} is not a sha256: 64 lowercase hex digits, as in the ETag or Location of a model"
        )
    artifact = await synth.store.get_by_sha(sha256)
    if artifact is None:
        raise ModelNotFound(
            f"model {sha256} is not in the cache (evicted, or never made here): ask for its size again "
            "(GET or POST /models?ratio=…) to make it"
        )
    headers = dict(artifact.address_headers)
    h = request.headers
    if precondition(request.method, h.get("if-match"), h.get("if-none-match"), artifact.etag) == NOT_MODIFIED:
        return Response(status_code=304, headers=headers)
    body = artifact.body
    span = byte_range(h.get("range"), h.get("if-range"), artifact.etag, len(body))
    if span is None:
        metrics.BYTES.inc(0 if is_head(request) else len(body))
        return Response(body, media_type=artifact.media_type, headers=headers)
    start, end = span
    metrics.BYTES.inc(0 if is_head(request) else end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
    return Response(body[start : end + 1], status_code=206, media_type=artifact.media_type, headers=headers)


def list_models(synth: Synthesizer) -> list[ModelInfo]:
    infos = []
    for name, ckpt in synth.models.items():
        t = ckpt.target
        widths = range(t.min_width, t.max_width + 1)
        infos.append(
            ModelInfo(
                name=name,
                builder=t.model,
                dataset=ckpt.data.name,
                input=InputSpec(shape=["batch", *ckpt.data.input_shape]),
                labels=ckpt.data.labels,
                digest=ckpt.digest,
                generated=ckpt.generated_tensors(),
                widths_trained=TrainedWidths(
                    min=t.trained_widths()[-1], max=t.max_width, step=t.train_stride, held_out=list(t.held_out)
                ),
                widths_allowed=WidthRange(min=t.min_width, max=t.max_width),
                max_ratio=ratio_for(t.min_width, t.max_width),
                params={w: ckpt.morph.param_count(w) for w in widths},
                bytes=synth.listed_sizes(ckpt),
                accuracy=ckpt.accuracy,
                samples=synth.settings.samples or ckpt.morph.samples,
                formats=list(export.FORMATS),
                dtypes=list(export.DTYPES),
            )
        )
    return infos


@router.get("/healthz", response_model_exclude_none=True, summary="Liveness: the process is up (also while loading)")
@router.get("/v2/health/live", response_model_exclude_none=True, summary="Liveness (Open Inference Protocol)")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", responses=ERROR_RESPONSES, summary="Readiness: checkpoints loaded and warmed up")
@router.get("/v2/health/ready", responses=ERROR_RESPONSES, summary="Readiness (Open Inference Protocol)")
async def readyz(synth: Synth) -> Health:
    """Ready once the models are loaded and warmed up; a Redis outage reports 'degraded' but stays ready."""
    remote = synth.store.remote
    redis = "disabled" if remote is None else ("ok" if await remote.ping() else "degraded")
    return Health(status="ready", checkpoint=synth.checkpoint(None).digest, redis=redis)


PAGE = (Path(__file__).parent / "page.html").read_bytes()


@router.get("/", include_in_schema=False)
async def page() -> Response:
    """The page to see and choose sizes (service/page.html): one file, no assets from elsewhere; it reads
    GET /models with the key it asks for when the service has keys, so the page itself needs none."""
    return Response(PAGE, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


@router.get("/metrics", include_in_schema=False)
async def metrics_text() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
