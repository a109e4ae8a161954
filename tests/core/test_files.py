"""neumeta_core/files.py: every input that changes a file's bytes is in its spec, and equal specs give equal
bytes, in this process and in others (`neumeta sample`, a fresh process each)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors import safe_open

from neumeta_core import checkpoint, export, files
from neumeta_core.errors import InputError
from tests.processes import BIN


def built(ckpt: checkpoint.Checkpoint, spec: files.FileSpec) -> bytes:
    return files.build(ckpt, spec, ckpt.probe()).body


@pytest.fixture(scope="module")
def base(bundled) -> tuple[files.FileSpec, bytes]:
    spec = files.spec_for(bundled, 12)
    return spec, built(bundled, spec)


@pytest.mark.parametrize(
    "change",
    [
        {"width": 13},
        {"format": "safetensors"},
        {"dtype": "float16"},
        {"samples": 1},
        {"precision": "bfloat16"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_each_setting_changes_the_key_with_the_bytes(bundled, base, change):
    spec, body = base
    other = replace(spec, **change)
    assert other.digest != spec.digest
    assert built(bundled, other) != body


def test_another_checkpoint_is_another_key_and_other_bytes(base):
    spec, body = base
    block = checkpoint.load(checkpoint.BLOCK)  # the earlier bundle: another digest, another quadrature
    other = files.spec_for(block, 12)
    assert (other.checkpoint, other.quadrature) != (spec.checkpoint, spec.quadrature)
    assert other.digest != spec.digest and built(block, other) != body


def test_the_engine_and_the_exporter_are_part_of_the_key(bundled, base):
    """The arithmetic differs between thread counts (measured on this CPU), torch releases and devices; a
    spec names the engine, so replicas whose arithmetic differs never share an entry."""
    spec, _ = base
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        other = files.spec_for(bundled, 12)
    finally:
        torch.set_num_threads(threads)
    assert f"{threads + 1} threads" in other.engine and other.digest != spec.digest
    assert replace(spec, exporter="neumeta-export/0").digest != spec.digest
    with pytest.raises(ValueError, match="another checkpoint or engine"):  # never built under a foreign spec
        files.build(bundled, other, bundled.probe())


def test_the_file_carries_its_spec(bundled, base, tmp_path):
    spec, body = base
    meta = {p.key: p.value for p in onnx.load_from_string(body).metadata_props}
    assert json.loads(meta["neumeta.spec"]) == json.loads(spec.canonical)
    assert meta["neumeta.width"] == "12" and meta["neumeta.checkpoint"] == bundled.digest
    assert meta["neumeta.ratio"] == "0.625" and meta["neumeta.samples"] == str(spec.samples)
    path = tmp_path / "w12.safetensors"
    path.write_bytes(built(bundled, replace(spec, format="safetensors")))
    with safe_open(str(path), "pt") as f:
        assert files.FileSpec.from_json(f.metadata()["neumeta.spec"]) == replace(spec, format="safetensors")


def test_a_spec_with_an_unknown_format_or_dtype_is_refused(base):
    spec, _ = base
    with pytest.raises(InputError, match=r"format must be one of onnx \| safetensors"):
        replace(spec, format="tflite")
    with pytest.raises(InputError, match="dtype must be one of"):
        replace(spec, dtype="int4")


FORMATS = [("onnx", "float32"), ("safetensors", "float32"), ("safetensors", "float16")]
# one fresh process: the sha256 of each format's file, built as the service builds it
IN_A_FRESH_PROCESS = f"""
import hashlib
from neumeta_core import checkpoint, files
c = checkpoint.load(checkpoint.BUNDLED)
for fmt, dtype in {FORMATS!r}:
    spec = files.spec_for(c, 20, fmt, dtype)
    print(spec.digest, hashlib.sha256(files.build(c, spec, c.probe()).body).hexdigest())
"""


def test_two_fresh_processes_write_the_same_bytes(bundled):
    """Each run is a new process (safetensors' own writer ordered its metadata differently in each): the same
    specs, the same sha256 in both, and in this process (which runs as many torch threads as a fresh one)."""
    python = str(BIN.parent / "python")
    runs = [
        subprocess.run([python, "-c", IN_A_FRESH_PROCESS], capture_output=True, text=True, check=True, timeout=120)
        for _ in range(2)
    ]
    first, second = (r.stdout.split() for r in runs)
    assert len(first) == 2 * len(FORMATS) and first == second
    torch.set_num_threads(_default_threads())  # restored after the test (conftest)
    here = []
    for fmt, dtype in FORMATS:
        spec = files.spec_for(bundled, 20, fmt, dtype)
        here += [spec.digest, hashlib.sha256(built(bundled, spec)).hexdigest()]
    assert here == first


def _default_threads() -> int:
    """The thread count a fresh process starts torch with (the cores it may run on)."""
    out = subprocess.run(
        [str(BIN.parent / "python"), "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


@pytest.mark.parametrize(
    "fmt,dtype", [("onnx", "float32"), ("onnx", "float16"), ("onnx", "int8"), ("safetensors", "float32")]
)
def test_a_files_size_is_known_from_its_spec_without_synthesis(bundled, fmt, dtype, monkeypatch):
    expected = {w: len(built(bundled, files.spec_for(bundled, w, fmt=fmt, dtype=dtype))) for w in (8, 9, 20, 32)}

    def refuse(*args, **kwargs):
        raise AssertionError("files.size must not synthesise")

    monkeypatch.setattr(bundled.morph, "generate", refuse)
    sizes = {w: files.size(bundled, files.spec_for(bundled, w, fmt=fmt, dtype=dtype)) for w in expected}
    assert sizes == expected
    assert sizes[8] < sizes[9] < sizes[20] < sizes[32]


def test_int8_files_are_quantised_deterministically_smaller_and_agree_with_float32(bundled):
    from neumeta_core import export

    spec = files.spec_for(bundled, 24, dtype="int8")
    body = built(bundled, spec)
    assert body == built(bundled, spec)  # equal specs, equal bytes
    full = built(bundled, files.spec_for(bundled, 24))
    assert len(body) < len(full) / 2.5  # h = 24: int8 weights; scales, zero points, int32 biases and Q/DQ nodes on top
    model = onnx.load_from_string(body)
    kinds = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(torch.tensor(t.dims).prod()) for t in int8) >= bundled.morph.param_count(24) * 0.9
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["neumeta.spec"]) == json.loads(spec.canonical)
    images = files.calibration_images(bundled)
    assert export.agreement(full, body, images) >= files.INT8_AGREEMENT
    x = bundled.probe().numpy()
    assert export.session(body).run(["logits"], {"input": x})[0].shape == (len(x), 10)


def test_int8_is_onnx_only_and_needs_calibration_images(bundled, mlp_checkpoint):
    with pytest.raises(InputError, match="dtype int8 is served as onnx only"):
        files.spec_for(bundled, 24, fmt="safetensors", dtype="int8")
    mlp = checkpoint.load(mlp_checkpoint)
    assert mlp.calibration is None  # a network without BatchNorm keeps no images
    with pytest.raises(InputError, match="holds no calibration images"):
        built(mlp, files.spec_for(mlp, 8, dtype="int8"))


def test_a_float32_file_is_checked_on_the_graphs_session_and_must_hold_exactly_its_weights(bundled, base):
    """files.verify runs the graph's session made at load (export.Graph.runner) on the weights read back from the
    file: the same logits as a session of the file itself, and any file that does not hold exactly the graph and
    the synthesized weights is refused."""
    spec, body = base
    graph = bundled.graph(spec.width)
    weights = export.served(graph, bundled.morph.state_dict(spec.width, samples=spec.samples))
    images = bundled.probe()[:2].numpy()
    own = export.session(body, optimise=False).run([export.OUTPUT], {export.INPUT: images})[0]
    got = export.run_filled(graph, body, weights, images)
    assert got is not None and float(np.abs(got - own).max()) <= 1e-6 * float(np.abs(own).max())
    files.verify(bundled, spec, body, weights, bundled.probe())  # passes

    def edited(edit) -> bytes:
        model = onnx.load_model_from_string(body)
        edit(model)
        return model.SerializeToString()

    name = graph.weights[0]
    bumped = dict(weights, **{name: np.nextafter(weights[name], np.inf).astype(np.float32)})
    tampered = {
        "one weight one ulp off": export.fill(graph, bumped),
        "a node dropped": edited(lambda m: m.graph.node.pop()),
        "an initialiser more": edited(lambda m: m.graph.initializer.append(numpy_helper.from_array(np.ones(1), "x"))),
        "another width's file": built(bundled, replace(spec, width=spec.width + 1)),
    }
    for what, other in tampered.items():
        assert export.run_filled(graph, other, weights, images) is None, what
        with pytest.raises(files.ExportMismatch):
            files.verify(bundled, spec, other, weights, bundled.probe())
