import hashlib

from service.cache import Artifact, CacheKey, LRUCache


def test_lru_is_bounded_in_bytes_and_evicts_least_recent():
    evicted: list[str] = []
    cache: LRUCache[bytes] = LRUCache(max_bytes=100, on_evict=lambda k, v: evicted.append(k))
    for w in range(3):
        cache.put(f"k{w}", b"x" * 40, 40)
    assert len(cache) == 2 and cache.bytes == 80  # 120 bytes do not fit: the oldest went
    assert cache.get("k0") is None and evicted == ["k0"]
    cache.get("k1")  # k1 is now the most recent
    cache.put("k3", b"y" * 40, 40)
    assert cache.get("k2") is None and cache.get("k1") == b"x" * 40


def test_item_larger_than_the_cache_is_not_kept():
    cache: LRUCache[bytes] = LRUCache(max_bytes=10)
    cache.put("k", b"z" * 11, 11)
    assert len(cache) == 0 and cache.bytes == 0


def test_replacing_a_key_keeps_the_byte_count_right():
    cache: LRUCache[bytes] = LRUCache(max_bytes=100)
    cache.put("k", b"a" * 30, 30)
    cache.put("k", b"b" * 50, 50)
    assert cache.bytes == 50 and cache.get("k") == b"b" * 50


def artifact(body: bytes = b"model bytes") -> Artifact:
    return Artifact(body, hashlib.sha256(body).hexdigest(), "digits_cnn", "c" * 64, 24, 123, 0.25, "onnx", "float32")


def test_record_round_trip_and_content_addressed_key():
    a = artifact()
    assert Artifact.from_record(a.to_record()) == a
    key = str(a.key())
    assert key.startswith("neumeta:v1:model:" + "c" * 64 + ":24:onnx:float32:")
    assert str(CacheKey("d" * 64, 24, "onnx", "float32")) != key  # another checkpoint, another key


def test_damaged_records_are_rejected():
    record = artifact().to_record()
    flipped = bytearray(record)
    flipped[-1] ^= 0xFF
    for damaged in (record[:-3], bytes(flipped), b"garbage", record.replace(b'"sha256": "', b'"sha256": "0', 1)):
        assert Artifact.from_record(damaged) is None
