"""The two-tier cache, single flight and degradation against a real redis-server."""

import asyncio
import time

from prometheus_client import generate_latest

from service.config import Settings
from service.main import create_app
from tests.service.conftest import RedisServer, metric, running


def settings(redis: RedisServer, **extra) -> Settings:
    return Settings(device="cpu", redis_url=redis.url, redis_timeout=0.2, **extra)


def sample(name: str) -> float:
    return metric(generate_latest().decode(), name)


def test_second_instance_finds_the_first_ones_entry_in_redis(redis_server):
    async def scenario():
        async with running(create_app(settings(redis_server))) as a:
            first = await a.post("/models?ratio=0.5")
        before = sample('neumeta_cache_lookups_total{result="hit",tier="redis"}')
        async with running(create_app(settings(redis_server))) as b:  # a new process's view: empty memory
            second = await b.post("/models?ratio=0.5")
            by_sha = await b.get(first.headers["location"])
        return first, second, by_sha, before

    first, second, by_sha, before = asyncio.run(scenario())
    assert first.headers["x-neumeta-cache"] == "miss" and second.headers["x-neumeta-cache"] == "hit"
    assert second.content == first.content and by_sha.content == first.content
    assert sample('neumeta_cache_lookups_total{result="hit",tier="redis"}') == before + 1
    keys = {k.decode() for k in redis_server.client().keys("neumeta:v2:*")}
    assert any(k.startswith("neumeta:v2:model:") for k in keys) and any(k.startswith("neumeta:v2:sha:") for k in keys)
    ttl = redis_server.client().ttl(next(k for k in keys if ":model:" in k))
    assert 0 < ttl <= 7 * 24 * 3600


def test_corrupted_redis_entry_is_never_served(redis_server):
    async def scenario():
        async with running(create_app(settings(redis_server))) as a:
            good = await a.post("/models?ratio=0.25")
        client = redis_server.client()
        key = "neumeta:v2:model:" + good.headers["x-neumeta-spec"]  # the key is the spec's digest
        record = client.get(key)
        client.set(key, record[:-100] + b"\x00" * 100)  # same length, damaged body
        corrupt_before = sample('neumeta_cache_lookups_total{result="corrupt",tier="redis"}')
        async with running(create_app(settings(redis_server))) as b:
            again = await b.post("/models?ratio=0.25")
        return good, again, corrupt_before, client.get(key)

    good, again, corrupt_before, stored = asyncio.run(scenario())
    assert again.status_code == 200 and again.content == good.content  # regenerated, not the damaged bytes
    assert again.headers["x-neumeta-cache"] == "miss"
    assert sample('neumeta_cache_lookups_total{result="corrupt",tier="redis"}') == corrupt_before + 1
    assert stored is not None and stored.endswith(good.content)  # the entry was rewritten whole


def test_32_concurrent_cold_requests_make_one_synthesis(redis_server):
    async def scenario():
        async with running(create_app(settings(redis_server))) as c:
            before = sample("neumeta_syntheses_total")
            joins = sample("neumeta_singleflight_joins_total")
            answers = await asyncio.gather(*(c.post("/models?width=13") for _ in range(32)))
            made = sample("neumeta_syntheses_total") - before
            return answers, made, sample("neumeta_singleflight_joins_total") - joins

    answers, syntheses, joins = asyncio.run(scenario())
    assert [r.status_code for r in answers] == [200] * 32
    assert len({r.content for r in answers}) == 1
    assert syntheses == 1 and joins == 31


def test_replicas_share_one_synthesis_through_the_redis_lock(redis_server):
    async def scenario():
        async with running(create_app(settings(redis_server))) as a, running(create_app(settings(redis_server))) as b:
            before = sample("neumeta_syntheses_total")
            served = sample('neumeta_lock_waits_total{result="served"}')
            answers = await asyncio.gather(a.post("/models?width=11"), b.post("/models?width=11"))
            waits = sample('neumeta_lock_waits_total{result="served"}') - served
            return answers, sample("neumeta_syntheses_total") - before, waits

    answers, syntheses, waits = asyncio.run(scenario())
    assert [r.status_code for r in answers] == [200, 200] and answers[0].content == answers[1].content
    assert syntheses == 1 and waits == 1


def test_redis_down_still_serves_and_recovers(redis_server):
    async def scenario():
        async with running(create_app(settings(redis_server))) as c:
            assert (await c.get("/readyz")).json()["redis"] == "ok"
            errors = sample('neumeta_redis_errors_total{op="get"}')
            redis_server.stop()
            during = await asyncio.gather(*(c.post(f"/models?width={w}") for w in (13, 14, 15, 13)))
            ready = await c.get("/readyz")
            counted = sample('neumeta_redis_errors_total{op="get"}') - errors
            redis_server.start()
            recovered = None
            deadline = time.monotonic() + 120  # a bound against a hang: the back-off is at most 30 s
            while (recovered := await c.get("/readyz")).json()["redis"] != "ok" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            after = await c.post("/models?width=9")
            return during, ready, counted, recovered, after

    during, ready, counted, recovered, after = asyncio.run(scenario())
    assert [r.status_code for r in during] == [200] * 4
    assert ready.status_code == 200 and ready.json()["redis"] == "degraded"
    assert counted >= 1
    assert recovered is not None and recovered.json()["redis"] == "ok"
    assert after.status_code == 200
    assert redis_server.client().keys("neumeta:v2:model:*")  # writes resumed after the restart


def test_full_queue_answers_503_with_retry_after():
    async def scenario():
        app = create_app(Settings(device="cpu", max_queue=0, max_concurrent=1))
        async with running(app) as c:
            return await asyncio.gather(c.post("/models?width=30"), c.post("/models?width=31"))

    answers = asyncio.run(scenario())
    # room for one synthesis and no queue: whichever request arrives second is refused
    assert sorted(r.status_code for r in answers) == [200, 503]
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.json()["error"] == "overloaded" and int(refused.headers["retry-after"]) > 0


def test_unreachable_redis_at_start_degrades_instead_of_failing():
    async def scenario():
        async with running(create_app(Settings(device="cpu", redis_url="redis://127.0.0.1:1/0"))) as c:
            return await c.post("/models?ratio=0.5"), await c.get("/readyz")

    made, ready = asyncio.run(scenario())
    assert made.status_code == 200
    assert ready.status_code == 200 and ready.json()["redis"] == "degraded"


def test_concurrent_failures_of_one_outage_back_off_once(redis_server):
    """Sixteen calls in flight when Redis dies count as one failure, not sixteen doublings."""
    from service.cache import RedisTier

    async def scenario():
        tier = RedisTier(redis_server.url, timeout=0.2, ttl=60, max_value_bytes=1 << 20)
        assert await tier.ping()
        redis_server.stop()
        results = await asyncio.gather(*(tier.get(f"k{i}") for i in range(16)))
        backoff = tier._backoff
        redis_server.start()
        await asyncio.sleep(0.3)  # past the first back-off (0.25 s): the next call tries again
        recovered = await tier.ping()
        await tier.client.aclose()
        return results, backoff, recovered

    results, backoff, recovered = asyncio.run(scenario())
    assert results == [None] * 16
    assert backoff == 0.5  # doubled once from 0.25
    assert recovered


def test_after_a_redis_restart_each_replica_writes_back_what_it_holds(redis_server):
    """Redis keeps nothing on disk: once it answers again after an outage, a replica republishes its
    models, so another replica can serve them by content address again."""

    async def scenario():
        async with running(create_app(settings(redis_server))) as a:
            made = await a.post("/models?width=14")
            redis_server.stop()
            await a.post("/models?width=14")  # a memory hit; the Redis lookup of the sha fails
            assert (await a.get("/readyz")).json()["redis"] == "degraded"
            redis_server.start()  # empty
            deadline = time.monotonic() + 120  # the back-off ends, Redis answers, the republish runs
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                if (await a.get("/readyz")).json()["redis"] == "ok" and redis_server.client().keys("neumeta:v2:sha:*"):
                    break
            async with running(create_app(settings(redis_server))) as b:  # never made it
                by_sha = await b.get(made.headers["location"])
        return made, by_sha

    made, by_sha = asyncio.run(scenario())
    assert by_sha.status_code == 200 and by_sha.content == made.content


def test_a_replica_whose_lock_owner_vanished_stops_waiting(redis_server):
    """Another replica took the synthesis lock, then died (here: its lock simply expires, never a result).
    The waiting replica makes the file itself once the lock is gone, not after NEUMETA_LOCK_TIMEOUT (300 s
    here: without the check this request would hang until the test's timeout)."""
    from neumeta_core import files
    from service.artifact import key_of

    async def scenario():
        app = create_app(settings(redis_server, lock_timeout=300, request_timeout=600))
        async with running(app) as c:
            synth = app.state.synth
            ckpt = synth.checkpoint(None)
            spec = synth.spec(ckpt, 17)
            lock = f"neumeta:v2:lock:{key_of(spec)}"
            redis_server.client().set(lock, b"another replica's token", px=3000)  # held, then gone
            before = sample('neumeta_lock_waits_total{result="abandoned"}')
            made = await c.get("/models?width=17")
            return made, sample('neumeta_lock_waits_total{result="abandoned"}') - before, spec

    made, abandoned, spec = asyncio.run(scenario())
    assert made.status_code == 200 and made.headers["x-neumeta-spec"] == spec.digest
    assert abandoned == 1
    assert (
        files.FileSpec.from_json(redis_server.client().get(f"neumeta:v2:sha:{made.headers['etag'].strip(chr(34))}"))
        == spec
    )
