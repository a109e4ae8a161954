import asyncio

import pytest

from service.cache import ModelStore
from service.config import Settings
from service.errors import InvalidRequest, ModelNotFound
from service.schemas import ModelRequest
from service.synthesis import Synthesizer


@pytest.fixture
def synth(bundled):
    s = Synthesizer({"digits_full": bundled}, ModelStore(10**8, None), Settings(device="cpu"))
    yield s
    s.close()


def test_concurrent_identical_requests_share_one_synthesis(synth, bundled, monkeypatch):
    calls: list[int] = []
    build = synth._build

    def counting(spec, ckpt):
        calls.append(spec.width)
        return build(spec, ckpt)

    monkeypatch.setattr(synth, "_build", counting)

    async def burst():
        same = [synth.get(bundled, synth.spec(bundled, 20)) for _ in range(8)]
        return await asyncio.gather(*same, synth.get(bundled, synth.spec(bundled, 10)))

    results = asyncio.run(burst())
    assert sorted(calls) == [10, 20]
    assert len({artifact.body for artifact, _ in results[:8]}) == 1


def test_resolve_validates_at_the_boundary(synth, bundled):
    assert synth.resolve(ModelRequest(ratio=0.0))[1] == 32
    assert synth.resolve(ModelRequest(ratio=0.75))[1] == 8
    assert synth.resolve(ModelRequest(width=9))[1] == 9
    assert synth.resolve(ModelRequest(max_params=bundled.morph.param_count(9)))[1] == 9
    for bad in (-0.01, 0.751, float("nan"), float("inf")):
        with pytest.raises(InvalidRequest, match=r"\[0, 0.75\]"):
            synth.resolve(ModelRequest(ratio=bad))
    with pytest.raises(ModelNotFound):
        synth.resolve(ModelRequest(ratio=0.5, model="other"))


def test_the_spec_holds_this_processs_settings(bundled):
    """NEUMETA_SAMPLES and NEUMETA_PRECISION change the bytes, so they change the key: two replicas with
    different K never serve each other's files."""
    store = ModelStore(10**8, None)
    own = Synthesizer({"digits_full": bundled}, store, Settings(device="cpu"))
    one = Synthesizer({"digits_full": bundled}, store, Settings(device="cpu", samples=1))
    try:
        a, b = own.spec(bundled, 20), one.spec(bundled, 20)
        assert (a.samples, b.samples) == (bundled.morph.samples, 1) and a.digest != b.digest
        made_a, _ = asyncio.run(own.get(bundled, a))
        made_b, cached = asyncio.run(one.get(bundled, b))  # one store, shared: still its own file
        assert not cached and made_a.body != made_b.body
    finally:
        own.close()
        one.close()
