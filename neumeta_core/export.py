"""ONNX export written directly with onnx.helper (milliseconds, no tracing per request).

Every family registers a graph writer; the graph's input is `input` (batch, 1, 8, 8) float32
with a dynamic batch axis, its output `logits` (batch, classes).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

INPUT = "input"
OUTPUT = "logits"
OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.10 on edge devices

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


GRAPH_WRITERS: dict[str, GraphWriter] = {"digits_cnn": _digits_cnn}


def to_onnx(family: str, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialized ONNX model of `family` with the weights in `state` (any device, float32)."""
    weights = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in state.items()}
    nodes, classes = GRAPH_WRITERS[family](weights)
    graph = helper.make_graph(
        nodes,
        family,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(a, name) for name, a in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="neumeta-serve")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, metadata or {})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def session(onnx_bytes: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def verify(onnx_bytes: bytes, model: nn.Module, probe: torch.Tensor) -> float:
    """Max abs difference between onnxruntime and the torch model on `probe`."""
    expected = model(probe.to(next(model.parameters()).device)).cpu().numpy()
    got = session(onnx_bytes).run([OUTPUT], {INPUT: probe.cpu().numpy()})[0]
    return float(np.abs(got - expected).max())
