"""Service settings, read from the environment with the NEUMETA_ prefix (README: Settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from neumeta_core.checkpoint import BUNDLED


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEUMETA_", frozen=True)

    checkpoints: Annotated[tuple[Path, ...], NoDecode] = Field(
        (BUNDLED,), description="comma-separated checkpoint paths; the first is the default model"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU")
    precision: Literal["float32", "tf32", "bfloat16"] = Field(
        "float32", description="hypernetwork arithmetic: tf32 applies to CUDA matmuls only (docs/benchmarks.md)"
    )
    samples: int | None = Field(
        None, ge=1, le=1000, description="K noisy weight sets averaged; default: the checkpoint's own"
    )
    redis_url: str | None = Field(None, description="redis://host:port/db; unset: in-process cache only")
    redis_timeout: float = Field(0.5, gt=0, description="seconds per Redis command before it counts as down")
    redis_ttl: int = Field(7 * 24 * 3600, ge=1, description="seconds a model stays in Redis")
    redis_max_value_bytes: int = Field(64 * 2**20, ge=1, description="larger models are not stored in Redis")
    lock_timeout: float = Field(30.0, gt=0, description="seconds another replica's synthesis is awaited")
    cache_max_bytes: int = Field(256 * 2**20, ge=0, description="bound of the in-process model cache")
    max_concurrent: int = Field(1, ge=1, description="syntheses running at once (one per device)")
    max_queue: int = Field(16, ge=0, description="distinct syntheses waiting; beyond it: 503 + Retry-After")
    request_timeout: float = Field(60.0, gt=0, description="seconds a request waits for its synthesis (504)")
    max_body_bytes: int = Field(16 * 1024, ge=0, description="largest request body accepted (413)")
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (), description="comma-separated bearer keys; empty: no authentication"
    )
    shutdown_grace: float = Field(20.0, ge=0, description="seconds in-flight requests get after SIGTERM")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("checkpoints", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value
