import numpy as np
import onnx
import pytest
import torch

from neumeta_core import export
from neumeta_core.config import TargetConfig
from neumeta_core.targets import digits_cnn, family


@pytest.mark.parametrize("width", [1, 7, 32, 40])
@pytest.mark.parametrize("name", ["digits_cnn", "digits_full", "mlp"])
def test_onnx_matches_torch(width, name):
    torch.manual_seed(width)
    model = family(name).build(TargetConfig(family=name), width).eval()
    body = export.to_onnx(name, model.state_dict(), {"neumeta.width": str(width)})
    onnx.checker.check_model(onnx.load_from_string(body))
    probe = torch.rand(16, 1, 8, 8)
    assert export.verify(body, model, probe) <= 1e-4


def test_dynamic_batch_axis_and_metadata():
    model = digits_cnn(width=8, cfg=TargetConfig()).eval()
    body = export.to_onnx("digits_cnn", model.state_dict(), {"neumeta.width": "8"})
    sess = export.session(body)
    assert sess.get_inputs()[0].name == "input"
    assert sess.get_inputs()[0].shape == ["batch", 1, 8, 8]
    for batch in (1, 5, 300):
        out = sess.run(["logits"], {"input": np.random.rand(batch, 1, 8, 8).astype(np.float32)})[0]
        assert out.shape == (batch, 10)
    assert {p.key: p.value for p in onnx.load_from_string(body).metadata_props} == {"neumeta.width": "8"}


def test_verify_detects_a_wrong_model():
    torch.manual_seed(0)
    model = digits_cnn(width=8).eval()
    other = digits_cnn(width=8).eval()
    body = export.to_onnx("digits_cnn", other.state_dict())
    assert export.verify(body, model, torch.rand(4, 1, 8, 8)) > 1e-3


def test_safetensors_bytes_depend_on_the_tensors_and_metadata_only():
    """The library writes the metadata keys in a different order in each process; ours sorts them."""
    from safetensors.torch import load

    a = {"w": torch.randn(3, 4), "b": torch.randn(3)}
    b = {"b": a["b"].clone(), "w": a["w"].clone()}  # the same tensors, inserted the other way round
    meta = {"neumeta.width": "3", "neumeta.checkpoint": "c" * 64, "neumeta.ratio": "0.5"}
    first = export.to_safetensors(a, meta)
    assert first == export.to_safetensors(b, dict(reversed(meta.items())))
    for dtype in ("float32", "float16"):
        body = export.to_safetensors(a, meta, dtype)
        assert load(body).keys() == a.keys()
        assert all(torch.equal(load(body)[k], v.to(export.DTYPES[dtype])) for k, v in a.items())
    header_length = int.from_bytes(first[:8], "little")
    assert header_length % 8 == 0 and first[8:].startswith(b'{"__metadata__":{"neumeta.checkpoint"')


def test_safetensors_metadata_reads_back(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    path.write_bytes(export.to_safetensors({"x": torch.ones(2)}, {"b": "2", "a": "1"}))
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"a": "1", "b": "2"}


def test_verify_is_relative_to_the_logits_scale():
    """A model with large logits is not a failure: float32 rounding grows with them."""
    torch.manual_seed(0)
    model = family("digits_full").build(TargetConfig(family="digits_full"), 16).eval()
    with torch.no_grad():
        model.fc.weight.mul_(1e5)
        model.fc.bias.mul_(1e5)
    body = export.to_onnx("digits_full", model.state_dict())
    probe = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        scale = float(model(probe).abs().max())
    assert scale > 1e3  # absolute errors of 1e-4 and more are float32 rounding here
    assert export.verify(body, model, probe) <= export.TOLERANCE
    with torch.no_grad():
        model.fc.bias[0] += 0.01 * scale  # a 1 % error: a wrong file
    assert export.verify(body, model, probe) > export.TOLERANCE


def test_the_light_names_match_the_registries():
    """neumeta_core.names repeats what the command line offers, so that it parses without importing torch."""
    from neumeta_core import names
    from neumeta_core.targets import FAMILIES

    assert tuple(sorted(FAMILIES)) == names.FAMILIES
    assert names.FORMATS == export.FORMATS and tuple(export.DTYPES) == names.DTYPES
