"""Model files: ONNX from a graph exported once per network (torch.onnx.export at training time, stored
in the checkpoint without its weights), filled with each width's weights here, and safetensors.

The graph's input is `input` (batch, *input_shape) float32 with a dynamic batch axis, its output `logits`
(batch, classes). BatchNorm was folded out of the graph at export: its statistics and affine terms are
folded into the layer before it here, per width (`fold`). With dtype float16 the weights are stored in
half precision and cast to float32 inside the graph: half the bytes, same interface. With dtype int8 the float
file is quantised statically by onnxruntime's quantisation tools (QDQ: int8 weights per output channel, uint8
activations calibrated on real images; `quantize`), input and output still float32. Nothing here runs code from
a checkpoint: a graph is data that onnxruntime interprets.
"""

from __future__ import annotations

import json
import logging
import struct
import tempfile
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from safetensors.torch import load as load_safetensors

from neumeta_core import names

INPUT = "input"
OUTPUT = "logits"
OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.10 on edge devices

VERSION = "neumeta-export/5"  # part of every cache key: bump when the bytes of a file change
FORMATS = names.FORMATS
DTYPES = names.DTYPES
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}  # what safetensors files store
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16"}
QUANTIZED = ("int8",)  # ONNX only, and only from a checkpoint that holds calibration images
TOLERANCE = 1e-4  # of a file against torch (or its reference logits), relative to the logits' scale

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Fold:
    """A BatchNormalization folded into the Conv or Gemm before it: W' = W s, b' = (b - mean) s + shift,
    s = scale / sqrt(var + eps). `bias` is empty where the layer had none; the graph reads `out_bias`."""

    weight: str
    bias: str
    scale: str
    shift: str
    mean: str
    var: str
    eps: float
    out_bias: str


@dataclass(frozen=True)
class Graph:
    """An exported graph without its weights, and the BatchNorm layers folded out of it."""

    template: bytes
    folds: list[Fold]

    @cached_property
    def proto(self) -> onnx.ModelProto:
        return onnx.load_from_string(self.template)

    @cached_property
    def weights(self) -> list[str]:
        """The names the graph reads that it does not make: the served file's initialisers, in graph order."""
        graph = self.proto.graph
        made = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
        made |= {t.name for t in graph.initializer}
        seen: dict[str, None] = {}
        for node in graph.node:
            for name in node.input:
                if name and name not in made:
                    seen.setdefault(name)
        return list(seen)

    @cached_property
    def runner(self) -> ort.InferenceSession:
        """The graph in an onnxruntime session with its weights as inputs, made once per width (MorphicNet.prepare
        makes it for every served width at load): a file's check runs it on the weights the file holds instead of
        building a session per file (`run_filled`)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.proto)
        model.graph.input.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in self.weights)
        model.ir_version = IR_VERSION
        return session(model.SerializeToString(), optimise=False)


def run_filled(graph: Graph, body: bytes, weights: Weights, images: np.ndarray) -> np.ndarray | None:
    """The logits on `images` of a float32 ONNX file that `fill` made of `graph` and `weights`: None unless the
    file holds exactly the graph's nodes, inputs, outputs, opsets and initialisers and, after them, the tensors of
    `weights`, bit for bit; then the graph's runner computes them on the tensors read back from the file, which is
    what a session of the file would compute (the graph and its weights are the file's)."""
    model = onnx.load_model_from_string(body)
    stored, file = graph.proto, model.graph
    if (
        file.node != stored.graph.node
        or file.input != stored.graph.input
        or file.output != stored.graph.output
        or model.opset_import != stored.opset_import
        or file.initializer[: len(stored.graph.initializer)] != stored.graph.initializer
    ):
        return None
    held = {t.name: numpy_helper.to_array(t) for t in file.initializer[len(stored.graph.initializer) :]}
    if list(held) != list(weights) or any(
        held[n].dtype != np.float32 or not np.array_equal(held[n], weights[n]) for n in weights
    ):
        return None
    return graph.runner.run([OUTPUT], {INPUT: images, **held})[0]


def fold(weights: Weights, folds: list[Fold]) -> Weights:
    """The weights the graph reads: every BatchNorm folded into the layer before it."""
    out = dict(weights)
    for f in folds:
        w = weights[f.weight]
        s = weights[f.scale] / np.sqrt(weights[f.var] + np.float32(f.eps))
        b = weights[f.bias] if f.bias else np.zeros(w.shape[0], dtype=np.float32)
        out[f.weight] = (w * s.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        out[f.out_bias] = ((b - weights[f.mean]) * s + weights[f.shift]).astype(np.float32)
    return out


def served(graph: Graph, state: dict[str, torch.Tensor] | Weights) -> Weights:
    """The served file's tensors, float32 numpy, in graph order: the state folded, the rest dropped."""
    weights = {
        k: v.detach().to("cpu", torch.float32).numpy() if isinstance(v, torch.Tensor) else v for k, v in state.items()
    }
    folded = fold(weights, graph.folds)
    return {n: folded[n] for n in graph.weights}


def to_onnx(
    graph: Graph,
    state: dict[str, torch.Tensor] | Weights,
    metadata: dict[str, str] | None = None,
    dtype: str = "float32",
) -> bytes:
    """Serialized ONNX model: the graph filled with the weights in `state` (any device), BatchNorm folded."""
    return fill(graph, served(graph, state), metadata, dtype)


def fill(graph: Graph, weights: Weights, metadata: dict[str, str] | None = None, dtype: str = "float32") -> bytes:
    """Serialized ONNX model: the graph filled with `weights`, the served tensors (`served`)."""
    model = onnx.ModelProto()
    model.CopyFrom(graph.proto)
    if dtype == "float16":  # store half, compute float: Cast each weight once, inside the graph
        casts = [helper.make_node("Cast", [f"{n}.fp16"], [n], to=TensorProto.FLOAT) for n in weights]
        initializers = [numpy_helper.from_array(a.astype(np.float16), f"{n}.fp16") for n, a in weights.items()]
        nodes = [*casts, *model.graph.node]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    else:
        initializers = [numpy_helper.from_array(a, n) for n, a in weights.items()]
    model.graph.initializer.extend(initializers)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, metadata or {})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def to_safetensors(
    state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, dtype: str = "float32"
) -> bytes:
    """The state dict as safetensors bytes, in `dtype`, with string metadata: a u64 header length, the JSON
    header, the tensors' little-endian bytes (the format's specification, read back by the safetensors
    library in verify_safetensors). Written here because the library orders the metadata keys differently
    in every process; here the metadata and the tensors are sorted by name, so equal input gives equal bytes."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(state):
        array = state[name].detach().to("cpu", TORCH_DTYPES[dtype]).contiguous().numpy()
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the library writes it
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def serialize(
    graph: Graph,
    weights: Weights,
    fmt: str,
    dtype: str,
    metadata: dict[str, str] | None = None,
    calibration: np.ndarray | None = None,
) -> bytes:
    """The file of `fmt` holding `weights`, the served tensors (`served`: BatchNorm folded): ONNX, or
    safetensors of the same tensors. int8 (ONNX only): the float32 file quantised on `calibration`."""
    if dtype in QUANTIZED:
        if fmt != "onnx" or calibration is None:
            raise ValueError("an int8 file is ONNX, quantised on calibration images")
        return quantize(fill(graph, weights, metadata), calibration)
    if fmt == "onnx":
        return fill(graph, weights, metadata, dtype)
    if fmt == "safetensors":
        return to_safetensors({k: torch.from_numpy(v) for k, v in weights.items()}, metadata, dtype)
    raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")


def rounded(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The weights as a file of `dtype` stores them, back in float32: the reference to verify against."""
    return {k: v.to(TORCH_DTYPES[dtype]).float() for k, v in state.items()}


def verify_safetensors(body: bytes, weights: Weights, dtype: str) -> float:
    """Max abs difference between the tensors in `body` and `weights` rounded to `dtype`."""
    loaded = load_safetensors(body)
    if loaded.keys() != weights.keys():
        return float("inf")
    ref = rounded({k: torch.from_numpy(v) for k, v in weights.items()}, dtype)
    return max(float((loaded[k].float() - ref[k]).abs().max()) for k in ref)


def verify_weights(body: bytes, weights: Weights, dtype: str) -> float:
    """Max abs difference between the initialisers of an ONNX file and `weights` rounded to `dtype`."""
    stored = {
        t.name.removesuffix(".fp16"): numpy_helper.to_array(t) for t in onnx.load_from_string(body).graph.initializer
    }
    if not weights.keys() <= stored.keys():
        return float("inf")
    np_dtype = np.float16 if dtype == "float16" else np.float32
    return max(
        (
            float(np.abs(stored[k].astype(np.float32) - v.astype(np_dtype).astype(np.float32)).max())
            for k, v in weights.items()
        ),
        default=0.0,
    )


def session(onnx_bytes: bytes, optimise: bool = True) -> ort.InferenceSession:
    """An onnxruntime session on one CPU thread; `optimise=False`, for a file run once on a few images: the graph as
    written, no memory arena or planned buffers (setting those up takes longer than such a run takes)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimise:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.enable_mem_pattern = False
        opts.enable_cpu_mem_arena = False
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def accuracy(onnx_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Percentage of `x` that the ONNX model classifies as `y`, run with onnxruntime."""
    logits = session(onnx_bytes).run([OUTPUT], {INPUT: x})[0]
    return 100.0 * float(np.mean(logits.argmax(axis=1) == y))


def relative(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference relative to the logits' scale (max |logit|, at least 1), so that large logits do
    not fail on float32 rounding."""
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))


def verify(onnx_bytes: bytes, expected: np.ndarray, probe: np.ndarray) -> float:
    """How far onnxruntime's logits on `probe` lie from `expected` (relative)."""
    got = session(onnx_bytes).run([OUTPUT], {INPUT: probe})[0]
    return relative(got, expected)


class _Batches(CalibrationDataReader):  # type: ignore[misc]
    """The calibration images, 64 at a time, as the quantiser reads them."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter([{INPUT: images[i : i + 64]} for i in range(0, len(images), 64)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


class _NoPreprocessAdvice(logging.Filter):
    """onnxruntime's quantiser advises pre-processing on the root logger at every call; our graphs are exported
    by torch.onnx with shapes already inferred, so the advice is noise in a server's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage() and "pre-processing" not in record.getMessage()


logging.getLogger().addFilter(_NoPreprocessAdvice())


def quantize(float_body: bytes, calibration: np.ndarray) -> bytes:
    """A float32 ONNX file quantised statically, QDQ format: weights int8 per output channel, activations uint8
    with ranges from `calibration` (min-max, deterministic: equal input gives equal bytes), the metadata kept."""
    model = onnx.load_from_string(float_body)
    with tempfile.TemporaryDirectory(prefix="neumeta-int8-") as tmp:
        out = f"{tmp}/int8.onnx"
        quantize_static(
            model,
            out,
            _Batches(np.ascontiguousarray(calibration, dtype=np.float32)),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
        quantized = onnx.load(out)
    quantized.ir_version = IR_VERSION
    quantized.producer_name, quantized.producer_version = model.producer_name, model.producer_version
    _short_names(quantized.graph)
    del quantized.metadata_props[:]
    helper.set_model_props(quantized, {p.key: p.value for p in model.metadata_props})
    onnx.checker.check_model(quantized)
    return quantized.SerializeToString()


def _short_names(graph: onnx.GraphProto) -> None:
    """Every inner tensor renamed to a short id and the node names dropped (ONNX needs neither): the quantiser's
    names (`/Relu_1_output_0_QuantizeLinear_Output`) would otherwise take more bytes than a small model's
    weights. The input and the output keep theirs."""
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    ids: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return ids.setdefault(name, f"t{len(ids)}")

    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for info in graph.value_info:
        info.name = short(info.name)


def agreement(reference: bytes, other: bytes, images: np.ndarray) -> float:
    """The fraction of `images` on which `other`'s top-1 class is `reference`'s (onnxruntime, both)."""
    a = session(reference).run([OUTPUT], {INPUT: images})[0].argmax(axis=1)
    b = session(other).run([OUTPUT], {INPUT: images})[0].argmax(axis=1)
    return float(np.mean(a == b))
