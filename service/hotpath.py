"""Cache hits answered before FastAPI's middleware and routing: the hot path (service/main.py's App).

A request for a model already in this process's memory is answered here, with headers formatted once per
file, and nothing else is done per request but the metrics and the access-log line:

- `GET /models/{sha256}` without Range or If-None-Match;
- `POST /models` with no body and a query string that FastAPI's handler has already resolved once (the
  handler records query string -> cache key after validating it, so nothing is parsed or validated here).

Everything else (a miss, a body, Range, If-None-Match, a missing or wrong API key, a service not yet
ready) goes to FastAPI unchanged, so both paths answer alike: tests/service/test_hotpath.py compares
them, headers included. docs/benchmarks.md has the figures that made this layer worth having.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from typing import NamedTuple

from starlette.datastructures import State
from starlette.types import Scope, Send

from service import metrics
from service.cache import CacheKey
from service.middleware import record_hit

SHA_PREFIX = "/models/"
SHA_LENGTH = 64
HEX = frozenset("0123456789abcdef")
MEMORY_HIT = metrics.CACHE.labels("memory", "hit")


class QueryMemo:
    """Query strings of POST /models that the handler validated, and the cache key each resolved to.

    Bounded (least recently used out), so distinct query strings cannot grow it without limit."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._keys: OrderedDict[bytes, str] = OrderedDict()

    def remember(self, query: bytes, key: CacheKey) -> None:
        self._keys[query] = str(key)
        self._keys.move_to_end(query)
        if len(self._keys) > self.max_entries:
            self._keys.popitem(last=False)

    def get(self, query: bytes) -> str | None:
        return self._keys.get(query)

    def __len__(self) -> int:
        return len(self._keys)


class Hit(NamedTuple):
    route: str  # the route template, for metrics and the log
    body: bytes
    headers: list[tuple[bytes, bytes]]  # as ASGI sends them
    wire: bytes  # the same, as 'name: value' lines (service/protocol.py)


async def serve_hit(state: State, scope: Scope, send: Send) -> bool:
    """Answer the request if it is a hit this layer can serve; False: FastAPI must answer it."""
    started = time.perf_counter()
    hit = hot_hit(state, scope)
    if hit is None:
        return False
    await send({"type": "http.response.start", "status": 200, "headers": hit.headers})
    await send({"type": "http.response.body", "body": hit.body})
    record_hit(hit.route, scope["method"], time.perf_counter() - started, len(hit.body))
    return True


def hot_hit(state: State, scope: Scope) -> Hit | None:
    """The answer to a request for a model in memory, or None when FastAPI must answer it."""
    method, path = scope["method"], scope["path"]
    is_get = method == "GET" and path.startswith(SHA_PREFIX) and len(path) == len(SHA_PREFIX) + SHA_LENGTH
    if not (is_get or (method == "POST" and path == "/models")):
        return None
    synth = getattr(state, "synth", None)
    if synth is None:
        return None
    authorization = None
    for name, value in scope["headers"]:
        if name in (b"range", b"if-none-match", b"transfer-encoding"):
            return None
        if name == b"content-length" and value != b"0":
            return None
        if name == b"authorization":
            authorization = value
    keys: tuple[bytes, ...] = state.api_keys
    if keys and not authorized(authorization, keys):
        return None  # FastAPI answers 401
    store = synth.store
    if is_get:
        sha = path[len(SHA_PREFIX) :]
        if not HEX.issuperset(sha):
            return None
        local = store.by_sha(sha)
        artifact = store.memory.get(local) if local else None
        if artifact is None:
            return None
        return Hit("/models/{sha256}", artifact.body, artifact.immutable_headers, artifact.immutable_wire)
    key = synth.queries.get(scope["query_string"])
    artifact = store.memory.get(key) if key else None
    if artifact is None:
        return None
    MEMORY_HIT.inc()
    return Hit("/models", artifact.body, artifact.hit_headers, artifact.hit_wire)


def authorized(header: bytes | None, keys: tuple[bytes, ...]) -> bool:
    """The check FastAPI's dependency makes: 'Bearer <key>', every key compared in constant time."""
    scheme, _, token = (header or b"").partition(b" ")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.strip(), key)
    return scheme.lower() == b"bearer" and matched
