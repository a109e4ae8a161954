import asyncio
import hashlib
from dataclasses import replace

from neumeta_core.files import FileSpec
from service.artifact import Artifact, Policy, key_of
from service.cache import LRUCache, ModelStore

SPEC = FileSpec("c" * 64, 24, "onnx", "float32", 4, "lattice", "float32", "torch x, onnx y, cpu AVX2 2 threads")


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


def test_replacing_a_key_keeps_the_byte_count_right_and_reports_the_old_value():
    left: list[tuple[str, bytes]] = []
    cache: LRUCache[bytes] = LRUCache(max_bytes=100, on_evict=lambda k, v: left.append((k, v)))
    cache.put("k", b"a" * 30, 30)
    cache.put("k", b"b" * 50, 50)
    assert cache.bytes == 50 and cache.get("k") == b"b" * 50
    assert left == [("k", b"a" * 30)]


def artifact(body: bytes = b"model bytes", spec: FileSpec = SPEC) -> Artifact:
    return Artifact(spec, body, hashlib.sha256(body).hexdigest(), "digits_full", 123, 0.25)


def test_record_round_trip_and_content_addressed_key():
    a = artifact()
    back = Artifact.from_record(a.to_record(), {}, Policy())
    assert back == a and back is not None and back.spec == SPEC
    assert a.key == "neumeta:v2:model:" + SPEC.digest
    for change in ({"checkpoint": "d" * 64}, {"samples": 1}, {"precision": "bfloat16"}, {"engine": "other"}):
        assert key_of(replace(SPEC, **change)) != a.key


def test_a_record_takes_this_replicas_name_for_the_checkpoint():
    back = Artifact.from_record(artifact().to_record(), {SPEC.checkpoint: "fashion"}, Policy())
    assert back is not None and back.model == "fashion" and back.filename == "fashion-w24.onnx"


def test_damaged_records_are_rejected():
    record = artifact().to_record()
    flipped = bytearray(record)
    flipped[-1] ^= 0xFF
    for damaged in (record[:-3], bytes(flipped), b"garbage", record.replace(b'"sha256": "', b'"sha256": "0', 1)):
        assert Artifact.from_record(damaged, {}, Policy()) is None


def test_the_sha_index_forgets_a_file_whose_entry_is_replaced_or_evicted():
    """A key whose bytes change (here: by hand; in production a bug or a shared Redis) must never be
    answered under the old sha256, by the hot path or by GET /models/{sha256}."""
    store = ModelStore(max_bytes=40, remote=None)
    old, new = artifact(b"old bytes" * 2), artifact(b"new bytes" * 2)
    store.remember(old)
    assert store.local_by_sha(old.sha256) == old
    store.remember(new)  # the same key, other bytes
    assert store.local_by_sha(old.sha256) is None and store.local_by_sha(new.sha256) == new
    assert asyncio.run(store.get_by_sha(old.sha256)) is None
    other = artifact(b"x" * 30, replace(SPEC, width=25))
    store.remember(other)  # 18 + 30 bytes > 40: the least recent (new) is evicted
    assert store.local_by_sha(new.sha256) is None and store.local_by_sha(other.sha256) == other
