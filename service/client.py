"""The edge client: fetch a size-matched model, verified, atomic, resumable, skipped when current.

1. A local file whose sha256 the server still answers with (If-None-Match -> 304) is kept.
2. A partial download (`OUT.part` plus `OUT.part.json` naming the file's sha256 and URL) resumes
   with a Range request on the immutable GET /models/{sha256}.
3. Otherwise POST /models streams the file into `OUT.part`.
4. The sha256 of the bytes must equal the ETag; only then is `OUT.part` renamed onto OUT.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, params: dict[str, str], out: Path, api_key: str | None = None, progress: bool = True) -> Fetched:
    out = Path(out)
    part, meta = out.with_name(out.name + ".part"), out.with_name(out.name + ".part.json")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=120.0) as client:
        if part.exists() and meta.exists():
            info = json.loads(meta.read_text())
            if info.get("params") == params and _resume(client, info, part, progress):
                try:
                    return _commit(part, meta, out, info["sha256"], "resumed")
                except FetchError:
                    pass  # a damaged partial file: start over below
            part.unlink(missing_ok=True)
        local = sha256_of(out) if out.exists() else None
        with client.stream("POST", "/models", params=params, headers=_if_none_match(local)) as r:
            if r.status_code == 304:
                return Fetched(out, local or "", "up-to-date", _width(r))
            if r.status_code != 200:
                r.read()
                raise FetchError(f"POST /models answered {r.status_code}: {r.text}")
            sha = r.headers["etag"].strip('"')
            meta.write_text(json.dumps({"sha256": sha, "location": r.headers["location"], "params": params}))
            _write(r, part, "wb", progress)
            width = _width(r)
    result = _commit(part, meta, out, sha, "downloaded")
    return Fetched(result.path, result.sha256, result.status, width)


def _if_none_match(sha: str | None) -> dict[str, str]:
    return {"If-None-Match": f'"{sha}"'} if sha else {}


def _width(r: httpx.Response) -> int | None:
    value = r.headers.get("x-neumeta-width")
    return int(value) if value else None


def _resume(client: httpx.Client, info: dict[str, str], part: Path, progress: bool) -> bool:
    """Append the rest of the file to `part`; False when the server no longer has it."""
    have = part.stat().st_size
    with client.stream("GET", info["location"], headers={"Range": f"bytes={have}-"}) as r:
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
