"""A served file and what its answers say about it: headers formatted once per file, and its Redis record.

The cache key of a file is the digest of its FileSpec (neumeta_core/files.py), under PREFIX.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property

from neumeta_core.files import FileSpec

PREFIX = "neumeta:v2"  # v2: keys are FileSpec digests
MEDIA_TYPES = {"onnx": "application/octet-stream", "safetensors": "application/octet-stream"}
IMMUTABLE = "public, max-age=31536000, immutable"


def key_of(spec: FileSpec) -> str:
    """The cache key of a file: its spec's digest (memory and Redis)."""
    return f"{PREFIX}:model:{spec.digest}"


@dataclass(frozen=True)
class Policy:
    """How answers may be cached downstream: the size forms' max-age (NEUMETA_MAX_AGE), and whether answers
    vary with the Authorization header (API keys on: a shared cache must not hand a file to another client)."""

    max_age: int = 60
    vary_auth: bool = False


@dataclass(frozen=True)
class Artifact:
    """A generated model file and what describes it."""

    spec: FileSpec
    body: bytes
    sha256: str
    model: str  # this process's name for the checkpoint
    params: int
    ratio: float
    policy: Policy = field(default=Policy(), compare=False)

    @property
    def filename(self) -> str:
        suffix = "" if self.spec.dtype == "float32" else f"-{self.spec.dtype}"
        return f"{self.model}-w{self.spec.width}{suffix}.{self.spec.format}"

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.spec.format]

    @property
    def key(self) -> str:
        return key_of(self.spec)

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'

    def _vary(self) -> dict[str, str]:
        return {"Vary": "Authorization"} if self.policy.vary_auth else {}

    @cached_property
    def headers(self) -> dict[str, str]:
        """What every answer to a size request (GET, HEAD, POST /models, and their 304) says about the file;
        formatted once, not per request. A shared cache may keep it `max_age` seconds, then revalidates."""
        return {
            "ETag": self.etag,
            "Cache-Control": f"public, max-age={self.policy.max_age}",
            "Location": f"/models/{self.sha256}",
            "Content-Location": f"/models/{self.sha256}",
            "Content-Disposition": f'attachment; filename="{self.filename}"',
            "X-NeuMeta-Model": self.model,
            "X-NeuMeta-Width": str(self.spec.width),
            "X-NeuMeta-Params": str(self.params),
            "X-NeuMeta-Ratio": f"{self.ratio:g}",
            "X-NeuMeta-Spec": self.spec.digest,
            **self._vary(),
        }

    @cached_property
    def address_headers(self) -> dict[str, str]:
        """The headers of GET /models/{sha256}: the content address never changes."""
        return {
            "ETag": self.etag,
            "Cache-Control": IMMUTABLE,
            "Accept-Ranges": "bytes",
            "Content-Disposition": self.headers["Content-Disposition"],
            **self._vary(),
        }

    @cached_property
    def hit_headers(self) -> list[tuple[bytes, bytes]]:
        """The raw headers of a size request answered from the cache (service/hotpath.py)."""
        return _raw({**self.headers, "X-NeuMeta-Cache": "hit"}, self)

    @cached_property
    def immutable_headers(self) -> list[tuple[bytes, bytes]]:
        """The raw headers of GET /models/{sha256} (service/hotpath.py)."""
        return _raw(self.address_headers, self)

    def to_record(self) -> bytes:
        header = {"spec": asdict(self.spec), "sha256": self.sha256, "model": self.model, "params": self.params}
        header["ratio"] = self.ratio
        return json.dumps(header, sort_keys=True).encode() + b"\n" + self.body

    @classmethod
    def from_record(cls, record: bytes, names: dict[str, str], policy: Policy) -> Artifact | None:
        """None for anything truncated, altered or malformed. `names`: checkpoint digest -> this process's
        name for it (another replica may have loaded the file under another name)."""
        head, sep, body = record.partition(b"\n")
        if not sep:
            return None
        try:
            meta = json.loads(head)
            spec = FileSpec.from_json(json.dumps(meta.pop("spec")))
            meta["model"] = names.get(spec.checkpoint, meta["model"])
            artifact = cls(spec=spec, body=body, policy=policy, **meta)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return artifact if hashlib.sha256(body).hexdigest() == artifact.sha256 else None


def _raw(headers: dict[str, str], artifact: Artifact) -> list[tuple[bytes, bytes]]:
    """Headers as the ASGI server sends them, as a Starlette Response with this body would have them."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(artifact.body)).encode()))
    raw.append((b"content-type", artifact.media_type.encode()))
    return raw
