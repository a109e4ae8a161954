"""Service settings, read from the environment with the NEUMETA_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from neumeta_core.checkpoint import BUNDLED


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEUMETA_", frozen=True)

    checkpoint: Path = Field(BUNDLED, description="hypernetwork checkpoint to load at start-up")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU")
    cache_max_bytes: int = Field(256 * 2**20, ge=0, description="bound of the in-process model cache")
    samples: int | None = Field(
        None, ge=1, le=1000, description="K noisy weight sets averaged; default: the checkpoint's"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
