"""Request and response models for the OpenAPI schema, and the one validation of a size request.

A size request's parameters come from the query string (GET, HEAD or POST /models) or, all of them, from
a JSON body (POST): both are validated by `ModelRequest`, so an unknown or a repeated parameter, a wrong
type or a value out of range is refused alike, with a message that says what was wrong and what is valid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import parse_qsl

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import BadRequest, InvalidRequest, UnsupportedMediaType

Format = Literal["onnx", "safetensors"]
DType = Literal["float32", "float16", "int8"]
SIZES = ("ratio", "width", "max_params", "max_bytes")
BUDGET_MAX = 2**63 - 1  # a budget is a signed 64-bit integer: what every client can state


class ModelRequest(BaseModel):
    """Exactly one of ratio, width, max_params or max_bytes chooses the size."""

    model_config = ConfigDict(extra="forbid")

    ratio: float | None = Field(None, description="compression ratio gamma = 1 - h/h_max; h = round((1 - ratio) h_max)")
    width: int | None = Field(None, description="hidden width h")
    max_params: int | None = Field(
        None, le=BUDGET_MAX, description="the largest width whose parameter count fits this budget"
    )
    max_bytes: int | None = Field(
        None,
        ge=1,
        le=BUDGET_MAX,
        description="the largest width whose file, in the format and dtype asked, is at most this many bytes",
    )
    model: str | None = Field(None, description="name of a loaded checkpoint (GET /models); default: the first")
    format: Format = Field("onnx", description="onnx (default) or safetensors (the state dict)")
    dtype: DType = Field(
        "float32",
        description="float32 (default), float16 (weights stored in half precision) or int8 (onnx only: quantised)",
    )

    @property
    def sizes(self) -> list[str]:
        return [n for n in SIZES if getattr(self, n) is not None]


def shown(value: object, limit: int = 40) -> str:
    """A client's value inside a message: quoted, and cut short so that a long one is not echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "…'"


def query_params(raw: bytes) -> dict[str, str]:
    """The query string's parameters; a parameter given twice is refused (its last value would win silently)."""
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            count = sum(1 for n, _ in pairs if n == name)
            raise InvalidRequest(f"{shown(name)} is given {count} times: give each parameter once")
        params[name] = value
    return params


def json_params(body: bytes, content_type: str | None) -> dict[str, Any]:
    """A JSON body's parameters. 415 for another media type, 400 for bytes that are not one JSON object."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"a body of type {shown(media)} is not read: send the parameters as JSON (Content-Type: "
            "application/json) or in the query string"
        )
    try:
        data = pydantic_core.from_json(body)  # bounded nesting: a deep body is an error, not a RecursionError
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BadRequest('the JSON body must be an object of parameters, such as {"ratio": 0.25}')
    return data


def validate(params: dict[str, Any], hint: Callable[[], str]) -> ModelRequest:
    """`params` as a ModelRequest with exactly one size, or InvalidRequest: the reasons, then `hint()` (what
    is valid, formatted only for a refusal), each stated once."""
    try:
        req = ModelRequest.model_validate(params)
    except ValidationError as exc:
        raise InvalidRequest(f"{'; '.join(_reason(e) for e in exc.errors())}. {hint()}") from None
    if not req.sizes:
        raise InvalidRequest(f"no size given. {hint()}")
    if len(req.sizes) > 1:
        raise InvalidRequest(f"{len(req.sizes)} sizes given ({', '.join(req.sizes)}). {hint()}")
    return req


def _reason(error: Any) -> str:
    name = str(error["loc"][0]) if error["loc"] else "the parameters"
    kind, given = error["type"], shown(error.get("input"))
    if kind == "extra_forbidden":
        return f"unknown parameter {shown(name)}"
    if kind.startswith("float_"):
        return f"{name}={given} is not a number"
    if kind.startswith("int_"):
        return f"{name}={given} is not an integer"
    if kind == "literal_error":
        return f"{name}={given} is not supported"
    if kind == "string_type":
        return f"{name} must be a string, not {given}"
    return f"{name}={given}: {error['msg']}"


class Health(BaseModel):
    status: str
    checkpoint: str | None = None
    redis: Literal["disabled", "ok", "degraded"] | None = None


class WidthRange(BaseModel):
    min: int
    max: int
    step: int = 1  # widths trained: max, max - step, ..., down to min; those between were never seen


class TrainedWidths(WidthRange):
    held_out: list[int] = []  # widths of that range training never drew either (kept out to measure them)


class InputSpec(BaseModel):
    name: str = "input"
    dtype: str = "float32"
    shape: list[int | str]  # ["batch", C, H, W]


class ModelInfo(BaseModel):
    name: str
    builder: str  # the build(width) function it was trained from: informational, never imported by the service
    dataset: str
    input: InputSpec
    labels: list[str]
    digest: str
    generated: list[str]
    widths_trained: TrainedWidths
    widths_allowed: WidthRange
    max_ratio: float
    params: dict[int, int]
    bytes: dict[str, dict[int, int]]  # dtype -> width -> bytes of the ONNX file (float32, float16)
    accuracy: dict[int, float]
    samples: int
    formats: list[str]
    dtypes: list[str]


class ErrorBody(BaseModel):
    error: str
    detail: str


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("the body is not a JSON object"),
    401: _error("an API key is required (Authorization: Bearer KEY)"),
    404: _error("no such model, or no such file"),
    412: _error("If-Match failed, or If-None-Match matched on a POST"),
    413: _error("the request body is over NEUMETA_MAX_BODY_BYTES"),
    415: _error("a body that is not application/json"),
    422: _error("invalid input; the detail names what is valid"),
    503: _error("not ready, or the synthesis queue is full (see Retry-After)"),
    504: _error("the synthesis took longer than the request timeout"),
}
