"""The edge client: fetch a size-matched model, verified, atomic, resumable, skipped when current.

1. A local file whose sha256 the server still answers with (GET with If-None-Match -> 304) is kept.
2. A partial download (`OUT.part` plus `OUT.part.json` naming the file's sha256 and URL) resumes
   with a Range request on the immutable GET /models/{sha256}; a damaged state file is discarded.
3. Otherwise GET /models?… (the cacheable form: a proxy in front may answer it) streams into `OUT.part`.
4. The sha256 of the bytes must equal the ETag; only then is `OUT.part` renamed onto OUT.
Network and HTTP errors are FetchError, with one line that says what happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    status: str  # "downloaded", "resumed" or "up-to-date"
    width: int | None = None


class FetchError(RuntimeError):
    """The server could not be reached, or answered with an error: one line, naming the server's detail."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def partial(out: Path) -> tuple[Path, Path]:
    """Where a download to `out` keeps its bytes and its state until it is complete."""
    return out.with_name(out.name + ".part"), out.with_name(out.name + ".part.json")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


@contextmanager
def reported(url: str) -> Iterator[None]:
    """httpx's transport errors as FetchError naming the server."""
    try:
        yield
    except httpx.TimeoutException:
        raise FetchError(f"{url} did not answer in time") from None
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise FetchError(f"cannot reach {url}: {reason}") from None


def error_of(r: httpx.Response) -> FetchError:
    """A FetchError with the server's own detail when it sent the {"error", "detail"} envelope."""
    try:
        detail = r.json()["detail"]
    except (ValueError, KeyError, TypeError):
        detail = r.text[:200] or r.reason_phrase
    return FetchError(f"{r.request.method} {r.request.url.path} answered {r.status_code}: {detail}")


def auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def download(url: str, params: dict[str, str], api_key: str | None = None) -> tuple[bytes, dict[str, str]]:
    """One model's bytes and headers (lower-case names), in memory: for evaluating a server's models."""
    with reported(url):
        r = httpx.get(f"{url.rstrip('/')}/models", params=params, headers=auth(api_key), timeout=120)
    if r.status_code != 200:
        raise error_of(r)
    return r.content, {k.lower(): v for k, v in r.headers.items()}


def fetch(
    url: str,
    params: dict[str, str],
    out: Path,
    api_key: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = _say,
) -> Fetched:
    out = Path(out)
    part, meta = partial(out)
    with reported(url), httpx.Client(base_url=url.rstrip("/"), headers=auth(api_key), timeout=120.0) as client:
        info = _state(meta, part, say)
        resumable = part.exists() and info is not None and info.get("params") == params
        if resumable and info is not None and _resume(client, info, part, progress):
            try:
                return _commit(part, meta, out, str(info["sha256"]), "resumed")
            except FetchError:
                pass  # a damaged partial file: start over below
        part.unlink(missing_ok=True)
        local = sha256_of(out) if out.exists() else None
        with client.stream("GET", "/models", params=params, headers=_if_none_match(local)) as r:
            if r.status_code == 304:
                return Fetched(out, local or "", "up-to-date", _width(r))
            if r.status_code != 200:
                r.read()
                raise error_of(r)
            sha = r.headers["etag"].strip('"')
            meta.write_text(json.dumps({"sha256": sha, "location": r.headers["location"], "params": params}))
            _write(r, part, "wb", progress)
            width = _width(r)
    result = _commit(part, meta, out, sha, "downloaded")
    return Fetched(result.path, result.sha256, result.status, width)


def _state(meta: Path, part: Path, say: Callable[[str], None]) -> dict[str, object] | None:
    """The partial download's state, or None; a damaged state file is discarded (with its partial bytes)."""
    if not meta.exists():
        return None
    try:
        info = json.loads(meta.read_text())
        valid = isinstance(info, dict) and all(isinstance(info.get(k), str) for k in ("sha256", "location"))
    except (ValueError, OSError) as exc:
        valid, info = False, str(exc)
    if valid:
        return dict(info)
    say(f"discarding the partial download: its state file {meta} is damaged; starting over")
    meta.unlink(missing_ok=True)
    part.unlink(missing_ok=True)
    return None


def _if_none_match(sha: str | None) -> dict[str, str]:
    return {"If-None-Match": f'"{sha}"'} if sha else {}


def _width(r: httpx.Response) -> int | None:
    value = r.headers.get("x-neumeta-width")
    return int(value) if value else None


def _resume(client: httpx.Client, info: dict[str, object], part: Path, progress: bool) -> bool:
    """Append the rest of the file to `part`; False when the server no longer has it."""
    have = part.stat().st_size
    with client.stream("GET", str(info["location"]), headers={"Range": f"bytes={have}-"}) as r:
        if r.status_code == 206:
            _write(r, part, "ab", progress, initial=have)
        elif r.status_code == 200:
            _write(r, part, "wb", progress)
        elif r.status_code == 416:  # already complete
            r.read()
        else:
            r.read()
            return False
    return True


def _write(r: httpx.Response, part: Path, mode: str, progress: bool, initial: int = 0) -> None:
    total = int(r.headers.get("content-length", 0)) + initial or None
    with (
        open(part, mode) as f,
        tqdm(total=total, initial=initial, unit="B", unit_scale=True, disable=not progress) as bar,
    ):
        for chunk in r.iter_bytes():
            f.write(chunk)
            f.flush()  # what arrived is on disk, to resume from, however the process ends
            bar.update(len(chunk))


def _commit(part: Path, meta: Path, out: Path, sha: str, status: str) -> Fetched:
    got = sha256_of(part)
    if got != sha:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        raise FetchError(f"downloaded bytes have sha256 {got}, the server's ETag says {sha}; partial file removed")
    os.replace(part, out)  # atomic on one file system: readers see the old file or the new one
    meta.unlink(missing_ok=True)
    return Fetched(out, sha, status)
