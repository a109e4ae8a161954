from service.cache import CacheKey, LRUCache


def key(width: int) -> CacheKey:
    return CacheKey("digest", width, "onnx")


def test_lru_is_bounded_in_bytes_and_evicts_least_recent():
    cache: LRUCache[bytes] = LRUCache(max_bytes=100)
    for w in range(3):
        cache.put(key(w), b"x" * 40, 40)
    assert len(cache) == 2 and cache.bytes == 80  # 120 bytes do not fit: the oldest went
    assert cache.get(key(0)) is None
    cache.get(key(1))  # 1 is now the most recent
    cache.put(key(3), b"y" * 40, 40)
    assert cache.get(key(2)) is None and cache.get(key(1)) == b"x" * 40


def test_item_larger_than_the_cache_is_not_kept():
    cache: LRUCache[bytes] = LRUCache(max_bytes=10)
    cache.put(key(1), b"z" * 11, 11)
    assert len(cache) == 0 and cache.bytes == 0


def test_replacing_a_key_keeps_the_byte_count_right():
    cache: LRUCache[bytes] = LRUCache(max_bytes=100)
    cache.put(key(1), b"a" * 30, 30)
    cache.put(key(1), b"b" * 50, 50)
    assert cache.bytes == 50 and cache.get(key(1)) == b"b" * 50
