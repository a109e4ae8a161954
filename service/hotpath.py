"""Cache hits answered before FastAPI's middleware and routing: the hot path (service/main.py's App).

A plain ASGI layer, nothing of the server's internals. A request for a model already in this process's
memory is answered here, with headers formatted once per file, and nothing else is done per request but
the metrics and the access-log line:

- `GET /models/{sha256}`: the memory tier's file with that sha256, its digest checked again here;
- `GET` or `POST /models` with no body and a query string that the full path has already validated (it
  records query string -> cache key; nothing is parsed or validated here).

Everything else (a miss, HEAD, a body, Range, a conditional request, a missing or wrong API key, a
service not yet ready) goes to FastAPI unchanged, so both paths answer alike: tests/service/test_hotpath.py
compares them, headers included. docs/benchmarks.md has the figures that made this layer worth having,
and those of the caching proxy (deploy/nginx) that serves repeats without Python at all.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict

from starlette.datastructures import State
from starlette.types import Scope, Send

from service import metrics
from service.artifact import Artifact
from service.middleware import record_hit

SHA_PREFIX = "/models/"
SHA_LENGTH = 64
HEX = frozenset("0123456789abcdef")
MEMORY_HIT = metrics.CACHE.labels("memory", "hit")
DECLINED = frozenset({b"range", b"if-none-match", b"if-match", b"if-range", b"transfer-encoding"})


class QueryMemo:
    """Query strings of size requests that the full path validated, and the cache key each resolved to.

    Bounded in bytes (least recently used out), and a query string longer than any valid one needs is not
    kept, so no stream of distinct query strings can grow it past `max_bytes`."""

    ENTRY_OVERHEAD = 200  # bytes a dict entry, two objects and the LRU link cost beyond the strings' own

    def __init__(self, max_bytes: int = 1 << 20, max_query: int = 256) -> None:
        self.max_bytes, self.max_query = max_bytes, max_query
        self.bytes = 0
        self._keys: OrderedDict[bytes, str] = OrderedDict()

    def _size(self, query: bytes, key: str) -> int:
        return len(query) + len(key) + self.ENTRY_OVERHEAD

    def remember(self, query: bytes, key: str) -> None:
        if len(query) > self.max_query:
            return
        old = self._keys.pop(query, None)
        if old is not None:
            self.bytes -= self._size(query, old)
        self._keys[query] = key
        self.bytes += self._size(query, key)
        while self.bytes > self.max_bytes:
            gone, gone_key = self._keys.popitem(last=False)
            self.bytes -= self._size(gone, gone_key)

    def get(self, query: bytes) -> str | None:
        return self._keys.get(query)

    def __len__(self) -> int:
        return len(self._keys)


async def serve_hit(state: State, scope: Scope, send: Send) -> bool:
    """Answer the request if it is a hit this layer can serve; False: FastAPI must answer it."""
    started = time.perf_counter()
    found = hot_hit(state, scope)
    if found is None:
        return False
    route, artifact, headers = found
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": artifact.body})
    record_hit(route, scope["method"], time.perf_counter() - started, len(artifact.body))
    return True


def hot_hit(state: State, scope: Scope) -> tuple[str, Artifact, list[tuple[bytes, bytes]]] | None:
    """(route template, file, raw headers) of a request for a model in memory; None: FastAPI answers it."""
    method, path = scope["method"], scope["path"]
    by_sha = method == "GET" and path.startswith(SHA_PREFIX) and len(path) == len(SHA_PREFIX) + SHA_LENGTH
    if not (by_sha or (path == "/models" and method in ("GET", "POST") and scope["query_string"])):
        return None
    synth = getattr(state, "synth", None)
    if synth is None:
        return None
    authorization = None
    for name, value in scope["headers"]:
        if name in DECLINED:
            return None
        if name == b"content-length" and value != b"0":
            return None
        if name == b"authorization":
            authorization = value
    keys: tuple[bytes, ...] = state.api_keys
    if keys and not authorized(authorization, keys):
        return None  # FastAPI answers 401
    store = synth.store
    if by_sha:
        sha = path[len(SHA_PREFIX) :]
        artifact = store.local_by_sha(sha) if HEX.issuperset(sha) else None
        return None if artifact is None else ("/models/{sha256}", artifact, artifact.immutable_headers)
    key = synth.queries.get(scope["query_string"])
    artifact = store.memory.get(key) if key else None
    if artifact is None:
        return None
    MEMORY_HIT.inc()
    return "/models", artifact, artifact.hit_headers


def authorized(header: bytes | None, keys: tuple[bytes, ...]) -> bool:
    """The check FastAPI's dependency makes: 'Bearer <key>', every key compared in constant time."""
    scheme, _, token = (header or b"").partition(b" ")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.strip(), key)
    return scheme.lower() == b"bearer" and matched
