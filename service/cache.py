"""In-process LRU cache of generated models, bounded in bytes."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class CacheKey:
    """Content address: a new checkpoint can never serve another checkpoint's bytes."""

    checkpoint: str  # sha256 of the checkpoint file
    width: int
    format: str


class LRUCache(Generic[V]):
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[CacheKey, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def get(self, key: CacheKey) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: CacheKey, value: V, size: int) -> None:
        if size > self.max_bytes:
            return  # larger than the whole cache: serve it, keep nothing
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted

    def __len__(self) -> int:
        return len(self._items)
