"""Thin handlers: decode the request, call the synthesizer, encode the answer."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from neumeta_core import export
from neumeta_core.sampling import ratio_for
from service import metrics
from service.cache import Artifact
from service.errors import InvalidRequest, ModelNotFound, NotReady, Unauthorized
from service.hotpath import authorized
from service.schemas import ERROR_RESPONSES, DType, Format, Health, ModelInfo, ModelRequest, WidthRange
from service.synthesis import Synthesizer

router = APIRouter()
SHA256 = r"^[0-9a-f]{64}$"


def synthesizer(request: Request) -> Synthesizer:
    synth: Synthesizer | None = getattr(request.app.state, "synth", None)
    if synth is None:
        raise NotReady("the checkpoint is not loaded yet")
    return synth


def require_key(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Bearer keys compared in constant time; no keys configured means no authentication."""
    keys: tuple[bytes, ...] = request.app.state.api_keys
    if keys and not authorized(authorization.encode("latin-1") if authorization else None, keys):
        raise Unauthorized("this route needs an API key: send 'Authorization: Bearer <key>'")


Synth = Annotated[Synthesizer, Depends(synthesizer)]
Authorized = [Depends(require_key)]


def model_headers(artifact: Artifact, cached: bool) -> dict[str, str]:
    return {**artifact.headers, "X-NeuMeta-Cache": "hit" if cached else "miss"}


def etag_matches(if_none_match: str | None, sha256: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or f'"{sha256}"' in tags


def _request(query: dict[str, object], body: ModelRequest | None, synth: Synthesizer) -> ModelRequest:
    given = {k: v for k, v in query.items() if v is not None}
    if body is not None:
        if given:
            raise InvalidRequest("give the parameters either in the query string or in a JSON body, not both")
        return body
    try:
        return ModelRequest(**given)
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise InvalidRequest(f"{reasons}. {synth.request_hint()}") from None


@router.post(
    "/models",
    response_class=Response,
    dependencies=Authorized,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the model file"},
        304: {"description": "If-None-Match matched: the client already has these bytes"},
        **ERROR_RESPONSES,
    },
    summary="Synthesize a model of the requested size and download it",
)
async def create_model(
    request: Request,
    synth: Synth,
    ratio: Annotated[float | None, Query(description="compression ratio gamma = 1 - h/h_max")] = None,
    width: Annotated[int | None, Query(description="hidden width h")] = None,
    max_params: Annotated[int | None, Query(description="parameter budget: the largest width that fits")] = None,
    model: Annotated[str | None, Query(description="checkpoint name; default the first")] = None,
    format: Annotated[Format | None, Query(description="onnx (default) or safetensors")] = None,
    dtype: Annotated[DType | None, Query(description="float32 (default) or float16")] = None,
    body: Annotated[ModelRequest | None, Body(description="the same parameters as JSON")] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    query = {"ratio": ratio, "width": width, "max_params": max_params, "model": model, "format": format}
    req = _request({**query, "dtype": dtype}, body, synth)
    ckpt, size = synth.resolve(req)
    asked = request.scope["query_string"] if body is None else None  # the hot path answers its hits from now on
    artifact, cached = await synth.get(ckpt, size, req.format, req.dtype, asked)
    headers = model_headers(artifact, cached)
    if etag_matches(if_none_match, artifact.sha256):
        return Response(status_code=304, headers=headers)
    metrics.BYTES.inc(len(artifact.body))
    return Response(artifact.body, media_type=artifact.media_type, headers=headers)


@router.get(
    "/models/{sha256}",
    response_class=Response,
    dependencies=Authorized,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the model file"},
        206: {"description": "the requested byte range"},
        304: {"description": "If-None-Match matched"},
        416: {"description": "the range lies outside the file"},
        **ERROR_RESPONSES,
    },
    summary="Download a generated model by its sha256 (immutable; supports ETag and Range)",
)
async def get_model(
    synth: Synth,
    sha256: Annotated[str, Path(pattern=SHA256, description="sha256 of the file, from ETag or Location")],
    if_none_match: Annotated[str | None, Header()] = None,
    range_: Annotated[str | None, Header(alias="range")] = None,
) -> Response:
    artifact = await synth.store.get_by_sha(sha256)
    if artifact is None:
        raise ModelNotFound(f"model {sha256} is not in the cache (evicted or never made): POST /models to make it")
    headers = artifact.address_headers
    if etag_matches(if_none_match, sha256):
        return Response(status_code=304, headers=headers)
    body = artifact.body
    try:
        span = byte_range(range_, len(body))
    except ValueError:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{len(body)}"})
    if span is None:
        metrics.BYTES.inc(len(body))
        return Response(body, media_type=artifact.media_type, headers=headers)
    start, end = span
    metrics.BYTES.inc(end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
    return Response(body[start : end + 1], status_code=206, media_type=artifact.media_type, headers=headers)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One 'bytes=a-b', 'bytes=a-' or 'bytes=-n' range -> (first, last); None: serve it all.

    ValueError when the range lies outside the file (416)."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if m is None or m.groups() == ("", ""):
        return None  # absent, multi-range or malformed: a full 200 is allowed (RFC 9110 14.2)
    first, last = m.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise ValueError(f"range {header} lies outside {size} bytes")
    return start, end


@router.get("/models", dependencies=Authorized, responses=ERROR_RESPONSES, summary="The loaded checkpoints")
async def list_models(synth: Synth) -> list[ModelInfo]:
    infos = []
    for name, ckpt in synth.models.items():
        t = ckpt.target
        widths = range(t.min_width, t.max_width + 1)
        infos.append(
            ModelInfo(
                name=name,
                family=t.family,
                digest=ckpt.digest,
                generated=ckpt.generated_tensors(),
                widths_trained=WidthRange(min=t.trained_widths()[-1], max=t.max_width, step=t.train_stride),
                widths_allowed=WidthRange(min=t.min_width, max=t.max_width),
                max_ratio=ratio_for(t.min_width, t.max_width),
                params={w: ckpt.morph.param_count(w) for w in widths},
                accuracy=ckpt.accuracy,
                samples=ckpt.morph.samples,
                formats=list(export.FORMATS),
                dtypes=list(export.DTYPES),
            )
        )
    return infos


@router.get("/healthz", summary="Liveness: the process is up", response_model_exclude_none=True)
@router.get("/v2/health/live", summary="Liveness (Open Inference Protocol)", response_model_exclude_none=True)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", responses=ERROR_RESPONSES, summary="Readiness: checkpoints loaded and warmed up")
@router.get("/v2/health/ready", responses=ERROR_RESPONSES, summary="Readiness (Open Inference Protocol)")
async def readyz(synth: Synth) -> Health:
    """Ready while the models are loaded; a Redis outage reports 'degraded' but stays ready."""
    remote = synth.store.remote
    redis = "disabled" if remote is None else ("ok" if await remote.ping() else "degraded")
    return Health(status="ready", checkpoint=synth.checkpoint(None).digest, redis=redis)


@router.get("/metrics", include_in_schema=False)
async def metrics_text() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
