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

    def counting(key, ckpt):
        calls.append(key.width)
        return build(key, ckpt)

    monkeypatch.setattr(synth, "_build", counting)

    async def burst():
        same = [synth.get(bundled, 20, "onnx", "float32") for _ in range(8)]
        return await asyncio.gather(*same, synth.get(bundled, 10, "onnx", "float32"))

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
