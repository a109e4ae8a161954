"""Request and response models for the OpenAPI schema; validation messages say what is valid."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Format = Literal["onnx", "safetensors"]
DType = Literal["float32", "float16"]


class ModelRequest(BaseModel):
    """Exactly one of ratio, width or max_params chooses the size."""

    model_config = ConfigDict(extra="forbid")

    ratio: float | None = Field(None, description="compression ratio gamma = 1 - h/h_max; h = round((1 - ratio) h_max)")
    width: int | None = Field(None, description="hidden width h")
    max_params: int | None = Field(None, description="the largest width whose parameter count fits this budget")
    model: str | None = Field(None, description="name of a loaded checkpoint (GET /models); default: the first")
    format: Format = "onnx"
    dtype: DType = "float32"

    @model_validator(mode="after")
    def _one_size(self) -> ModelRequest:
        given = [n for n in ("ratio", "width", "max_params") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of ratio, width or max_params (got {', '.join(given) or 'none'})")
        return self


class Health(BaseModel):
    status: str
    checkpoint: str | None = None
    redis: Literal["disabled", "ok", "degraded"] | None = None


class WidthRange(BaseModel):
    min: int
    max: int
    step: int = 1  # widths trained: max, max - step, ..., down to min; those between were never seen


class ModelInfo(BaseModel):
    name: str
    family: str
    digest: str
    generated: list[str]
    widths_trained: WidthRange
    widths_allowed: WidthRange
    max_ratio: float
    params: dict[int, int]
    accuracy: dict[int, float]
    samples: int
    formats: list[str]
    dtypes: list[str]


class ErrorBody(BaseModel):
    error: str
    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "an API key is required (Authorization: Bearer KEY)"},
    404: {"model": ErrorBody, "description": "no such model"},
    422: {"model": ErrorBody, "description": "invalid input; the detail names the valid range"},
    503: {"model": ErrorBody, "description": "not ready, or the synthesis queue is full (see Retry-After)"},
    504: {"model": ErrorBody, "description": "the synthesis took longer than the request timeout"},
}
