"""Thin handlers: decode the request, call the synthesizer, encode the answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.errors import NotReady
from service.schemas import ERROR_RESPONSES, Health
from service.synthesis import Artifact, Synthesizer

router = APIRouter()


def synthesizer(request: Request) -> Synthesizer:
    synth: Synthesizer | None = getattr(request.app.state, "synth", None)
    if synth is None:
        raise NotReady("the checkpoint is not loaded yet")
    return synth


Synth = Annotated[Synthesizer, Depends(synthesizer)]


def model_headers(artifact: Artifact, hit: bool) -> dict[str, str]:
    return {
        "ETag": f'"{artifact.sha256}"',
        "Content-Disposition": f'attachment; filename="{artifact.filename}"',
        "X-NeuMeta-Width": str(artifact.width),
        "X-NeuMeta-Params": str(artifact.params),
        "X-NeuMeta-Ratio": f"{artifact.ratio:g}",
        "X-NeuMeta-Cache": "hit" if hit else "miss",
    }


@router.post(
    "/models",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the ONNX model"}, **ERROR_RESPONSES},
    summary="Synthesize a model at a compression ratio and download it as ONNX",
)
async def create_model(
    synth: Synth,
    ratio: Annotated[
        float | None,
        Query(description="compression ratio gamma = 1 - h / h_max; the served width is round((1 - ratio) * h_max)"),
    ] = None,
) -> Response:
    width = synth.width_for_ratio(ratio)
    artifact, hit = await synth.get(width)
    return Response(artifact.body, media_type="application/octet-stream", headers=model_headers(artifact, hit))


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", summary="Readiness: the checkpoint is loaded and warmed up", responses=ERROR_RESPONSES)
async def readyz(synth: Synth) -> Health:
    return Health(status="ready", checkpoint=synth.checkpoint.digest)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
