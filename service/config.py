"""Service settings, read from the environment with the NEUMETA_ prefix (README: Settings).

Every value is checked here, before anything is loaded: `load_settings` turns the errors into one line
that names each bad setting and what it accepts (SettingsError), for `neumeta serve` to print.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from neumeta_core.builders import SERVED

PREFIX = "NEUMETA_"
REDIS_SCHEMES = ("redis", "rediss", "unix")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True)

    checkpoints: Annotated[tuple[Path, ...], NoDecode] = Field(
        SERVED, description="comma-separated checkpoint paths; the first is the default model"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU")
    precision: Literal["float32", "tf32", "bfloat16"] = Field(
        "float32", description="hypernetwork arithmetic: tf32 applies to CUDA matmuls only (docs/benchmarks.md)"
    )
    samples: int | None = Field(
        None, ge=1, le=1000, description="K noisy weight sets averaged; default: the checkpoint's own"
    )
    threads: int | None = Field(
        None, ge=1, le=1024, description="torch threads for synthesis; default: torch's (the cores it sees)"
    )
    redis_url: str | None = Field(None, description="redis://host:port/db; unset: in-process cache only")
    redis_timeout: float = Field(0.5, gt=0, description="seconds per Redis command before it counts as down")
    redis_ttl: int = Field(7 * 24 * 3600, ge=1, description="seconds a model stays in Redis")
    redis_max_value_bytes: int = Field(64 * 2**20, ge=1, description="larger models are not stored in Redis")
    lock_timeout: float = Field(30.0, gt=0, description="seconds another replica's synthesis is awaited")
    cache_max_bytes: int = Field(256 * 2**20, ge=0, description="bound of the in-process model cache")
    max_age: int = Field(
        60, ge=0, le=365 * 24 * 3600, description="seconds a shared cache may reuse a size answer unrevalidated"
    )
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

    @field_validator("checkpoints")
    @classmethod
    def _checkpoint_files(cls, paths: tuple[Path, ...]) -> tuple[Path, ...]:
        if not paths:
            raise ValueError("give at least one checkpoint file (comma-separated paths; the first is the default)")
        for path in paths:
            if not path.exists():
                raise ValueError(f"{path}: no such file")
            if path.is_dir():
                raise ValueError(f"{path} is a directory, not a checkpoint file")
        stems = [p.stem for p in paths]
        if len(set(stems)) != len(stems):
            raise ValueError(f"two checkpoints have the same name (file stem) in {', '.join(stems)}: rename one")
        return paths

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is None or url == "":
            return None
        parts = urlsplit(url)
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError("must be a URL redis://host[:port][/db], rediss://… (TLS) or unix:///path")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("its port must be a number in 1..65535") from None
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("names no host: redis://host[:port][/db]")
        if port == 0:
            raise ValueError("its port must be a number in 1..65535")
        db = parts.path.strip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            raise ValueError(f"its database {db!r} must be a number: redis://host[:port]/0")
        return url

    @field_validator("api_keys")
    @classmethod
    def _printable_keys(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for n, key in enumerate(keys, 1):
            text = key.get_secret_value()
            if not text.isascii() or not text.isprintable() or " " in text:
                raise ValueError(f"key {n} must be printable ASCII without spaces (it is sent as 'Bearer <key>')")
        return keys


class SettingsError(ValueError):
    """Bad settings, as one line naming each bad NEUMETA_* variable and what it accepts."""


def load_settings() -> Settings:
    """Settings from the environment, or SettingsError."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(e) for e in exc.errors())) from None


def _describe(error: object) -> str:
    assert isinstance(error, dict)
    name = PREFIX + ".".join(str(p) for p in error.get("loc", ())[:1]).upper()
    given = os.environ.get(name)
    shown = f"{name}={given!r}" if given is not None else name
    reason = str(error.get("msg", "")).removeprefix("Value error, ")
    return f"{shown}: {reason}"


def misspelt() -> list[str]:
    """NEUMETA_* variables that are no setting but look like one (a typo would otherwise go unnoticed)."""
    known = [PREFIX + name.upper() for name in Settings.model_fields]
    out = []
    for name in sorted(os.environ):
        if name.startswith(PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            if close:
                out.append(f"{name} is not a setting: did you mean {close[0]}? (it is ignored)")
    return out
