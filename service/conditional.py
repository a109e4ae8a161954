"""Conditional and range requests as RFC 9110 defines them (sections 13 and 14), for files with strong ETags.

- If-Match (strong comparison) that fails: 412, whatever the method.
- If-None-Match (weak comparison) that matches: 304 for GET and HEAD, 412 for any other method (13.1.2).
- Range: one `bytes=` range of the file; a range outside it is 416. If-Range with another ETag (or a date:
  these files carry no Last-Modified) ignores the Range and sends the whole file (13.1.5).
If-Modified-Since and If-Unmodified-Since are ignored: the files have no Last-Modified, only ETags.
"""

from __future__ import annotations

import re

from service.errors import PreconditionFailed, RangeNotSatisfiable

SAFE = frozenset({"GET", "HEAD"})
NOT_MODIFIED = 304


def _tags(header: str) -> set[str]:
    return {t.strip() for t in header.split(",") if t.strip()}


def etag_matches(header: str | None, etag: str, weak: bool) -> bool:
    """Does an If-Match / If-None-Match header name `etag` (a quoted strong tag)? `*` matches any file."""
    if not header:
        return False
    tags = _tags(header)
    if "*" in tags:
        return True
    return etag in tags or (weak and f"W/{etag}" in tags)


def precondition(method: str, if_match: str | None, if_none_match: str | None, etag: str) -> int | None:
    """304 when the client already has the file (GET, HEAD); None to answer normally. PreconditionFailed
    (412) when a condition fails. Evaluated in the order of RFC 9110 13.2.2."""
    if if_match is not None and not etag_matches(if_match, etag, weak=False):
        raise PreconditionFailed(f"If-Match names no current file: this one is {etag}")
    if if_none_match is not None and etag_matches(if_none_match, etag, weak=True):
        if method in SAFE:
            return NOT_MODIFIED
        raise PreconditionFailed(
            f"If-None-Match matched {etag}: a {method} with a matching If-None-Match fails (RFC 9110 13.1.2); "
            "to ask whether a file changed, send GET"
        )
    return None


def byte_range(header: str | None, if_range: str | None, etag: str, size: int) -> tuple[int, int] | None:
    """One 'bytes=a-b', 'bytes=a-' or 'bytes=-n' range -> (first, last); None: send the whole file (no
    Range, a malformed or multi-part one, or an If-Range that does not name this file).
    RangeNotSatisfiable (416) when the range lies outside the file."""
    if header is None or (if_range is not None and if_range.strip() != etag):
        return None
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if m is None or m.groups() == ("", ""):
        return None  # a full 200 is allowed (RFC 9110 14.2)
    first, last = m.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(
            f"range {header.strip()} lies outside the file's {size} bytes (bytes 0-{size - 1})",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end
