"""Model cache: an in-process LRU bounded in bytes, in front of an optional Redis.

A key is the digest of a file's FileSpec (neumeta_core/files.py): everything its bytes depend on, so a
new checkpoint, K, precision, engine or exporter can never serve another file's bytes. A Redis value is a
JSON header line (the spec among it) plus the body; the body's sha256 is checked on every read, and a
corrupt entry is deleted, never served. The index from sha256 to key forgets a file whose entry leaves.
Redis failures degrade to misses: the request is synthesised, the failure counted, and Redis is
skipped for an exponentially growing back-off before the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import LockError, RedisError

from neumeta_core.files import FileSpec
from service import metrics
from service.artifact import PREFIX, Artifact, Policy, key_of

log = logging.getLogger("neumeta.cache")

V = TypeVar("V")
T = TypeVar("T")


class LRUCache(Generic[V]):
    """Least-recently-used map bounded by the sum of the sizes given to put()."""

    def __init__(self, max_bytes: int, on_evict: Callable[[str, V], None] | None = None) -> None:
        """`on_evict(key, value)` for every value that leaves: evicted, or replaced under its key."""
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._on_evict = on_evict

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, value: V, size: int) -> bool:
        """Keep `value`; False when it is larger than the whole cache (served, not kept)."""
        if size > self.max_bytes:
            return False
        replaced = self.pop(key)
        if replaced is not None and self._on_evict:
            self._on_evict(key, replaced)  # its sha256 is forgotten, as an evicted one's is
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            old, (evicted, old_size) = self._items.popitem(last=False)
            self.bytes -= old_size
            if self._on_evict:
                self._on_evict(old, evicted)
        return True

    def pop(self, key: str) -> V | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.bytes -= item[1]
        return item[0]

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[V]:
        """A snapshot of the values, least recently used first."""
        return [value for value, _ in self._items.values()]


class RedisTier:
    """Redis with a time-out per command and a back-off after failures."""

    def __init__(self, url: str, timeout: float, ttl: int, max_value_bytes: int) -> None:
        self.client = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.timeout, self.ttl, self.max_value_bytes = timeout, ttl, max_value_bytes
        self._down_until = 0.0
        self._backoff = 0.25
        self._failed_at = float("-inf")
        self.last_error: str | None = None
        self.on_recover: Callable[[], None] | None = None  # called once when Redis answers again after failing

    @property
    def degraded(self) -> bool:
        return self.last_error is not None

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T | None:
        started = time.monotonic()
        if started < self._down_until:
            metrics.REDIS_ERRORS.labels(op).inc()
            return None
        try:
            result = await asyncio.wait_for(fn(), self.timeout * 2)
        except (RedisError, OSError, TimeoutError) as exc:
            metrics.REDIS_ERRORS.labels(op).inc()
            self.last_error = f"{type(exc).__name__}: {exc}"
            if started < self._failed_at:  # another call in flight already counted this failure
                return None
            self._failed_at = time.monotonic()
            self._down_until = self._failed_at + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)
            await self._drop_connections()  # pooled sockets to a restarted server are all stale
            log.warning("redis %s failed (%s); retrying in %.2fs", op, self.last_error, self._backoff / 2)
            return None
        recovered = self.last_error is not None
        self.last_error, self._backoff = None, 0.25
        if recovered:
            log.warning("redis answers again")
            if self.on_recover is not None:
                self.on_recover()
        return result

    async def _drop_connections(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.connection_pool.disconnect()

    async def get(self, key: str) -> bytes | None:
        async def read() -> bytes | None:
            value = await self.client.get(key)
            return value if isinstance(value, bytes) else None

        return await self._call("get", read)

    async def put(self, artifact: Artifact) -> None:
        record = artifact.to_record()
        if len(record) > self.max_value_bytes:
            return

        async def write() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(artifact.key, record, ex=self.ttl)
                pipe.set(f"{PREFIX}:sha:{artifact.sha256}", artifact.spec.canonical, ex=self.ttl)
                await pipe.execute()

        await self._call("set", write)

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda: self.client.delete(key))

    async def ping(self) -> bool:
        return bool(await self._call("ping", self.client.ping))

    def lock(self, key: str, timeout: float) -> aioredis.lock.Lock:
        return self.client.lock(f"{PREFIX}:lock:{key}", timeout=timeout, blocking=False)

    async def acquire(self, lock: aioredis.lock.Lock) -> bool | None:
        """True: ours; False: another replica holds it; None: Redis is unavailable."""
        return await self._call("lock", lock.acquire)

    async def held(self, lock: aioredis.lock.Lock) -> bool:
        """Does any replica hold the lock? (False too when Redis fails: nobody is known to hold it.)"""
        return bool(await self._call("lock", lock.locked))

    async def release(self, lock: aioredis.lock.Lock) -> None:
        async def release() -> None:
            with contextlib.suppress(LockError):  # expired: the synthesis outlived lock_timeout
                await lock.release()

        await self._call("unlock", release)

    async def close(self) -> None:
        await self.client.aclose()


class ModelStore:
    """Both tiers behind one interface; the memory tier is filled from Redis hits."""

    def __init__(
        self,
        max_bytes: int,
        remote: RedisTier | None,
        names: dict[str, str] | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.memory: LRUCache[Artifact] = LRUCache(max_bytes, self._forget)
        self.remote = remote
        self.names = names or {}  # checkpoint digest -> this process's name for it
        self.policy = policy or Policy()
        self._by_sha: dict[str, str] = {}
        self._republishing: asyncio.Task[int] | None = None
        if remote is not None:
            remote.on_recover = self._schedule_republish

    def _schedule_republish(self) -> None:
        """After an outage Redis may have restarted empty, and other replicas find models by content
        address only there: write back what this process holds (in the background, once at a time)."""
        if self._republishing is None or self._republishing.done():
            self._republishing = asyncio.get_running_loop().create_task(self.republish())

    async def republish(self) -> int:
        """Write every model in memory to Redis again; the number written."""
        assert self.remote is not None
        written = 0
        for artifact in self.memory.values():
            await self.remote.put(artifact)
            if self.remote.degraded:
                break  # down again: the next recovery starts over
            written += 1
        log.info("republished %d models to redis", written)
        return written

    def _forget(self, key: str, artifact: Artifact) -> None:
        if self._by_sha.get(artifact.sha256) == key:
            del self._by_sha[artifact.sha256]

    def remember(self, artifact: Artifact) -> None:
        if self.memory.put(artifact.key, artifact, len(artifact.body)):
            self._by_sha[artifact.sha256] = artifact.key

    async def get(self, spec: FileSpec) -> Artifact | None:
        artifact = self.memory.get(key_of(spec))
        metrics.CACHE.labels("memory", "hit" if artifact else "miss").inc()
        if artifact is None and self.remote is not None:
            artifact = await self.get_remote(spec)
        return artifact

    async def get_remote(self, spec: FileSpec) -> Artifact | None:
        assert self.remote is not None
        key = key_of(spec)
        record = await self.remote.get(key)
        if record is None:
            metrics.CACHE.labels("redis", "error" if self.remote.degraded else "miss").inc()
            return None
        artifact = Artifact.from_record(record, self.names, self.policy)
        if artifact is None or artifact.spec != spec:
            metrics.CACHE.labels("redis", "corrupt").inc()
            log.error("corrupt cache entry %s deleted", key)
            await self.remote.delete(key)
            return None
        metrics.CACHE.labels("redis", "hit").inc()
        self.remember(artifact)
        return artifact

    def local_by_sha(self, sha256: str) -> Artifact | None:
        """The file with this sha256 if the memory tier holds it, its digest checked (the hot path's lookup)."""
        key = self._by_sha.get(sha256)
        artifact = self.memory.get(key) if key else None
        return artifact if artifact is not None and artifact.sha256 == sha256 else None

    async def get_by_sha(self, sha256: str) -> Artifact | None:
        artifact = self.local_by_sha(sha256)
        if artifact is None and self.remote is not None:
            pointer = await self.remote.get(f"{PREFIX}:sha:{sha256}")
            if pointer is not None:
                try:
                    spec = FileSpec.from_json(pointer)
                except (ValueError, TypeError):
                    return None
                artifact = await self.get_remote(spec)
        return artifact if artifact is not None and artifact.sha256 == sha256 else None

    async def put(self, artifact: Artifact) -> None:
        self.remember(artifact)
        if self.remote is not None:
            await self.remote.put(artifact)
