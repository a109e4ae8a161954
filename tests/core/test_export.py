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
