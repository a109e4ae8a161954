"""Model files: ONNX written directly with onnx.helper (milliseconds, no tracing per request)
and safetensors.

Every family registers a graph writer; the graph's input is `input` (batch, *input_shape) float32
with a dynamic batch axis ((1, 8, 8) for digits, (3, 32, 32) for CIFAR), its output `logits`
(batch, classes). With dtype float16 the weights
are stored in half precision and cast to float32 inside the graph: half the bytes, same interface.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import load as load_safetensors
from torch import nn

from neumeta_core import names
from neumeta_core.targets import family as family_of

INPUT = "input"
OUTPUT = "logits"
OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.10 on edge devices

VERSION = "neumeta-export/3"  # part of every cache key: bump when the bytes of a file change
FORMATS = names.FORMATS
DTYPES = dict(zip(names.DTYPES, (torch.float32, torch.float16), strict=True))
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16"}
TOLERANCE = 1e-4  # of verify(): the file against torch, relative to the logits' scale

Weights = dict[str, np.ndarray]
GraphWriter = Callable[[Weights], tuple[list[onnx.NodeProto], int]]


def _conv(x: str, prefix: str, out: str) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, f"{prefix}.weight", f"{prefix}.bias"], [out], pads=[1, 1, 1, 1], name=prefix)


def _digits_cnn(w: Weights) -> tuple[list[onnx.NodeProto], int]:
    """conv1-relu-conv2-relu-maxpool, residual block, global average pool, fc."""
    nodes = [
        _conv(INPUT, "conv1", "c1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        _conv("r1", "conv2", "c2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["stream"], kernel_shape=[2, 2], strides=[2, 2]),
        _conv("stream", "block.conv_a", "ca"),
        helper.make_node("Relu", ["ca"], ["ra"]),
        _conv("ra", "block.conv_b", "cb"),
        helper.make_node("Add", ["stream", "cb"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["rb"]),
        helper.make_node("GlobalAveragePool", ["rb"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], [OUTPUT], transB=1, name="fc"),
    ]
    return nodes, int(w["fc.weight"].shape[0])


def _digits_full(w: Weights) -> tuple[list[onnx.NodeProto], int]:
    """conv1-relu-conv2-relu-maxpool-conv3-relu, global average pool, fc (BatchNorm folded)."""
    nodes = [
        _conv(INPUT, "conv1.conv", "c1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        _conv("r1", "conv2.conv", "c2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        _conv("p2", "conv3.conv", "c3"),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], [OUTPUT], transB=1, name="fc"),
    ]
    return nodes, int(w["fc.weight"].shape[0])


def _mlp(w: Weights) -> tuple[list[onnx.NodeProto], int]:
    """flatten, fc1, relu, fc2."""
    nodes = [
        helper.make_node("Flatten", [INPUT], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["rh"]),
        helper.make_node("Gemm", ["rh", "fc2.weight", "fc2.bias"], [OUTPUT], transB=1, name="fc2"),
    ]
    return nodes, int(w["fc2.weight"].shape[0])


def _conv_unit(x: str, prefix: str, out: str, w: Weights, stride: int = 1) -> onnx.NodeProto:
    """A folded ConvBN of ResNet20: its padding follows the kernel size."""
    pad = int(w[f"{prefix}.conv.weight"].shape[-1]) // 2
    inputs = [x, f"{prefix}.conv.weight", f"{prefix}.conv.bias"]
    return helper.make_node("Conv", inputs, [out], pads=[pad] * 4, strides=[stride, stride], name=prefix)


def _resnet20(w: Weights) -> tuple[list[onnx.NodeProto], int]:
    """stem conv-relu, nine basic blocks (shortcut conv where the shape changes, optional gate), GAP, fc."""
    nodes = [_conv_unit(INPUT, "conv1", "stem", w), helper.make_node("Relu", ["stem"], ["x0"])]
    x = "x0"
    for s in range(3):
        for b in range(3):
            p = f"layer{s + 1}.{b}"
            stride = 2 if b == 0 and s > 0 else 1
            nodes += [
                _conv_unit(x, f"{p}.conv1", f"{p}.c1", w, stride),
                helper.make_node("Relu", [f"{p}.c1"], [f"{p}.r1"]),
                _conv_unit(f"{p}.r1", f"{p}.conv2", f"{p}.branch", w),
            ]
            branch = f"{p}.branch"
            if f"{p}.gate" in w:
                nodes.append(helper.make_node("Mul", [branch, f"{p}.gate"], [f"{p}.gated"]))
                branch = f"{p}.gated"
            skip = x
            if f"{p}.shortcut.conv.weight" in w:
                nodes.append(_conv_unit(x, f"{p}.shortcut", f"{p}.skip", w, stride))
                skip = f"{p}.skip"
            nodes += [
                helper.make_node("Add", [skip, branch], [f"{p}.sum"]),
                helper.make_node("Relu", [f"{p}.sum"], [f"{p}.out"]),
            ]
            x = f"{p}.out"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], [OUTPUT], transB=1, name="fc"),
    ]
    return nodes, int(w["fc.weight"].shape[0])


GRAPH_WRITERS: dict[str, GraphWriter] = {
    "digits_cnn": _digits_cnn,
    "digits_full": _digits_full,
    "mlp": _mlp,
    "resnet20": _resnet20,
}


def to_onnx(
    family: str, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, dtype: str = "float32"
) -> bytes:
    """Serialized ONNX model of `family` with the weights in `state` (any device)."""
    weights = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in state.items()}
    nodes, classes = GRAPH_WRITERS[family](weights)
    if dtype == "float16":  # store half, compute float: Cast each weight once, inside the graph
        casts = [helper.make_node("Cast", [f"{n}.fp16"], [n], to=TensorProto.FLOAT) for n in weights]
        initializers = [numpy_helper.from_array(a.astype(np.float16), f"{n}.fp16") for n, a in weights.items()]
        nodes = casts + nodes
    else:
        initializers = [numpy_helper.from_array(a, n) for n, a in weights.items()]
    graph = helper.make_graph(
        nodes,
        family,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *family_of(family).input_shape])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", classes])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="neumeta-serve")
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
        array = state[name].detach().to("cpu", DTYPES[dtype]).contiguous().numpy()
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
    family: str, state: dict[str, torch.Tensor], fmt: str, dtype: str, metadata: dict[str, str] | None = None
) -> bytes:
    if fmt == "onnx":
        return to_onnx(family, state, metadata, dtype)
    if fmt == "safetensors":
        return to_safetensors(state, metadata, dtype)
    raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")


def rounded(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The weights as a file of `dtype` stores them, back in float32: the reference to verify against."""
    return {k: v.to(DTYPES[dtype]).float() for k, v in state.items()}


def verify_safetensors(body: bytes, state: dict[str, torch.Tensor], dtype: str) -> float:
    """Max abs difference between the tensors in `body` and `state` rounded to `dtype`."""
    loaded = load_safetensors(body)
    if loaded.keys() != state.keys():
        return float("inf")
    ref = rounded(state, dtype)
    return max(float((loaded[k].float() - ref[k].cpu()).abs().max()) for k in ref)


def session(onnx_bytes: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def accuracy(onnx_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Percentage of `x` that the ONNX model classifies as `y`, run with onnxruntime."""
    logits = session(onnx_bytes).run([OUTPUT], {INPUT: x})[0]
    return 100.0 * float(np.mean(logits.argmax(axis=1) == y))


@torch.no_grad()
def verify(onnx_bytes: bytes, model: nn.Module, probe: torch.Tensor) -> float:
    """How far onnxruntime's logits on `probe` lie from the torch model's: the largest difference relative
    to the logits' scale (max |logit|, at least 1), so that large logits do not fail on float32 rounding."""
    expected = model(probe.to(next(model.parameters()).device)).cpu().numpy()
    got = session(onnx_bytes).run([OUTPUT], {INPUT: probe.cpu().numpy()})[0]
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))
