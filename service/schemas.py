"""Response models for the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Health(BaseModel):
    status: str
    checkpoint: str | None = None


class ErrorBody(BaseModel):
    error: str
    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "invalid input; the detail names the valid range"},
    503: {"model": ErrorBody, "description": "not ready"},
}
