import asyncio

import pytest

from service.cache import LRUCache
from service.errors import InvalidRequest
from service.synthesis import Synthesizer


@pytest.fixture
def synth(bundled):
    s = Synthesizer(bundled, LRUCache(10**8))
    yield s
    s.close()


def test_concurrent_identical_requests_share_one_synthesis(synth, monkeypatch):
    calls: list[int] = []
    build = synth._build

    def counting(width: int):
        calls.append(width)
        return build(width)

    monkeypatch.setattr(synth, "_build", counting)

    async def burst():
        return await asyncio.gather(*(synth.get(20) for _ in range(8)), synth.get(10))

    results = asyncio.run(burst())
    assert sorted(calls) == [10, 20]
    bodies = {artifact.body for artifact, _ in results[:8]}
    assert len(bodies) == 1


def test_width_for_ratio_validates_at_the_boundary(synth):
    assert synth.width_for_ratio(0.0) == 32
    assert synth.width_for_ratio(0.875) == 4
    for bad in (None, -0.01, 0.876, float("nan"), float("inf")):
        with pytest.raises(InvalidRequest, match=r"\[0, 0.875\]"):
            synth.width_for_ratio(bad)
