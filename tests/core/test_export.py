import numpy as np
import onnx
import pytest
import torch

from neumeta_core import export, structure
from neumeta_core.builders.digits import digits_cnn, digits_full, mlp


def _graph(build, width):
    model = structure._randomise(build(width), width)
    template, folds = structure.export_graph(model, (1, 8, 8))
    return export.Graph(template, folds), model


@pytest.mark.parametrize("width", [1, 7, 32, 40])
@pytest.mark.parametrize("build", [digits_cnn, digits_full, mlp])
def test_onnx_matches_torch(width, build):
    graph, model = _graph(build, width)
    body = export.to_onnx(graph, model.state_dict(), {"neumeta.width": str(width)})
    onnx.checker.check_model(onnx.load_from_string(body))
    probe = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        assert export.verify(body, model(probe).numpy(), probe.numpy()) <= 1e-4


def test_batchnorm_is_folded_out_of_the_served_graph():
    graph, model = _graph(digits_full, 8)
    body = export.to_onnx(graph, model.state_dict())
    ops = {n.op_type for n in onnx.load_from_string(body).graph.node}
    assert "BatchNormalization" not in ops and len(graph.folds) == 3
    assert set(graph.weights) == {f"conv{i}.conv.{p}" for i in (1, 2, 3) for p in ("weight", "bias")} | {
        "fc.weight",
        "fc.bias",
    }


def test_dynamic_batch_axis_and_metadata():
    graph, model = _graph(digits_cnn, 8)
    body = export.to_onnx(graph, model.state_dict(), {"neumeta.width": "8"})
    sess = export.session(body)
    assert sess.get_inputs()[0].name == "input"
    assert sess.get_inputs()[0].shape == ["batch", 1, 8, 8]
    for batch in (1, 5, 300):
        out = sess.run(["logits"], {"input": np.random.rand(batch, 1, 8, 8).astype(np.float32)})[0]
        assert out.shape == (batch, 10)
    assert {p.key: p.value for p in onnx.load_from_string(body).metadata_props} == {"neumeta.width": "8"}


def test_verify_detects_a_wrong_model():
    graph, model = _graph(digits_cnn, 8)
    other = structure._randomise(digits_cnn(8), 99)
    body = export.to_onnx(graph, other.state_dict())
    probe = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert export.verify(body, model(probe).numpy(), probe.numpy()) > 1e-3


def test_float16_files_store_half_and_compute_float():
    graph, model = _graph(digits_full, 16)
    full, half = (export.to_onnx(graph, model.state_dict(), dtype=d) for d in ("float32", "float16"))
    assert len(half) < 0.6 * len(full)
    assert {t.data_type for t in onnx.load_from_string(half).graph.initializer} == {onnx.TensorProto.FLOAT16}
    weights = export.served(graph, model.state_dict())
    assert (
        export.verify_weights(half, weights, "float16") == 0.0
        and export.verify_weights(full, weights, "float32") == 0.0
    )
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    a = export.session(full).run(["logits"], {"input": x})[0]
    assert export.verify(half, a, x) < 1e-2


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
        assert all(torch.equal(load(body)[k], v.to(export.TORCH_DTYPES[dtype])) for k, v in a.items())
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
    graph, model = _graph(digits_full, 16)
    with torch.no_grad():
        model.fc.weight.mul_(1e5)
        model.fc.bias.mul_(1e5)
    body = export.to_onnx(graph, model.state_dict())
    probe = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        expected = model(probe).numpy()
    scale = float(np.abs(expected).max())
    assert scale > 1e3  # absolute errors of 1e-4 and more are float32 rounding here
    assert export.verify(body, expected, probe.numpy()) <= export.TOLERANCE
    expected[:, 0] += 0.01 * scale  # a 1 % error: a wrong file
    assert export.verify(body, expected, probe.numpy()) > export.TOLERANCE


def test_the_light_names_match_the_registries():
    """neumeta_core.names and the command line repeat what they offer, so that they parse without torch."""
    from neumeta_core import builders, data, names
    from service import cli

    assert names.FORMATS == export.FORMATS and tuple(export.DTYPES) == names.DTYPES
    assert cli.DATASETS == data.DATASETS
    assert builders.DEFAULT in builders.NAMES and set(builders.BUNDLES) <= set(builders.NAMES)
