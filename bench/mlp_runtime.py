"""The hypernetwork's MLP in onnxruntime against torch, at the row counts a synthesis runs (a probe for issue 14).

    .venv/bin/python bench/mlp_runtime.py [--checkpoint PATH] [--repeats 10]

docs/benchmarks.md named "a runtime with a lower cost per kernel" as a way to bring cold synthesis nearer its
floor at the small widths. This measures it before anyone builds it: the first tensor's residual MLP of the
checkpoint (3 hidden layers of `hidden` units, ELU, residual scales, the output layer) on R rows of its encoded
inputs, in torch as neumeta_core/plan.py runs it (ELU as plan._elu computes it, in place) and as one onnxruntime session
(MatMul, Add, Elu, Mul, Add per layer; inputs fed, so nothing is constant-folded), both with the process's torch
threads, the fastest of --repeats each, alternated. Rows: a small synthesis's group (512), one tile (4,096) and
all of h = 32's queries of the Fashion bundle at K = 4 (about 40,000). The floor is the rows' multiply-adds at
the 2048 x 2048 matmul rate measured in the same run, as in bench/cold_synthesis.py.

Writes docs/results/mlp_runtime.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cold_synthesis import matmul_rate  # bench/ is the script's own directory: first on sys.path

from neumeta_core import checkpoint
from neumeta_core.builders import FASHION
from neumeta_core.hypernet import ResidualMLP
from neumeta_core.plan import _elu

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def mlp_graph(mlp: ResidualMLP) -> bytes:
    """The MLP as an ONNX graph: x (rows, P) -> y (rows, O)."""
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: torch.Tensor) -> str:
        inits.append(numpy_helper.from_array(value.detach().numpy().astype(np.float32), name))
        return name

    def linear(x: str, layer: torch.nn.Linear, name: str) -> str:
        w, b = const(f"{name}.w", layer.weight.T.contiguous()), const(f"{name}.b", layer.bias)
        nodes.append(helper.make_node("MatMul", [x, w], [f"{name}.m"]))
        nodes.append(helper.make_node("Add", [f"{name}.m", b], [f"{name}.y"]))
        return f"{name}.y"

    z = linear("x", mlp.inp, "inp")
    nodes.append(helper.make_node("Elu", [z], ["z0"]))
    z = "z0"
    for i, layer in enumerate(mlp.hidden):
        u = linear(z, layer, f"h{i}")  # type: ignore[arg-type]
        s = const(f"s{i}", mlp.scales[i].reshape(1))
        nodes.append(helper.make_node("Elu", [u], [f"e{i}"]))
        nodes.append(helper.make_node("Mul", [f"e{i}", s], [f"se{i}"]))
        nodes.append(helper.make_node("Add", [z, f"se{i}"], [f"z{i + 1}"]))
        z = f"z{i + 1}"
    y = linear(z, mlp.out, "out")
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", mlp.inp.in_features])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["rows", mlp.out.out_features])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@torch.no_grad()
def torch_mlp(mlp: ResidualMLP, x: torch.Tensor) -> torch.Tensor:
    """The plan's arithmetic for one MLP, untiled: addmm, ELU as plan._elu computes it, in place, the residual add."""
    z = torch.addmm(mlp.inp.bias, x, mlp.inp.weight.T)
    scratch = torch.empty_like(z)
    _elu(z, scratch)
    u = torch.empty_like(z)
    for i, layer in enumerate(mlp.hidden):
        torch.addmm(layer.bias, z, layer.weight.T, out=u)  # type: ignore[arg-type]
        _elu(u, scratch)
        z.add_(u, alpha=float(mlp.scales[i]))
    return torch.addmm(mlp.out.bias, z, mlp.out.weight.T)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=FASHION)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rows", type=int, nargs="+", default=[512, 4096, 40_000])
    p.add_argument("--out", type=Path, default=RESULTS / "mlp_runtime.json")
    args = p.parse_args()
    ckpt = checkpoint.load(args.checkpoint)
    mlp = ckpt.morph.hypernet.mlps[0]
    assert isinstance(mlp, ResidualMLP)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(mlp_graph(mlp), options, providers=["CPUExecutionProvider"])
    rate = matmul_rate(torch.device("cpu"))
    hidden, width = mlp.inp.out_features, mlp.inp.in_features
    macs = width * hidden + len(mlp.hidden) * hidden * hidden + hidden * mlp.out.out_features
    rows: list[dict[str, Any]] = []
    for n in args.rows:
        x = torch.randn(n, width, generator=torch.Generator().manual_seed(n))
        feed = {"x": x.numpy()}
        got, want = session.run(None, feed)[0], torch_mlp(mlp, x).numpy()
        error = float(np.abs(got - want).max() / np.abs(want).max())
        best = {"torch": float("inf"), "onnxruntime": float("inf")}
        for _ in range(args.repeats):  # alternated, so that a busy moment hits both
            started = time.perf_counter()
            torch_mlp(mlp, x)
            best["torch"] = min(best["torch"], time.perf_counter() - started)
            started = time.perf_counter()
            session.run(None, feed)
            best["onnxruntime"] = min(best["onnxruntime"], time.perf_counter() - started)
        floor = 2 * n * macs / rate
        rows.append(
            {
                "rows": n,
                "torch_ms": round(best["torch"] * 1e3, 3),
                "onnxruntime_ms": round(best["onnxruntime"] * 1e3, 3),
                "floor_ms": round(floor * 1e3, 3),
                "onnxruntime_over_torch": round(best["onnxruntime"] / best["torch"], 2),
                "max_relative_difference": error,
            }
        )
    record = {
        "command": "python bench/mlp_runtime.py " + " ".join(sys.argv[1:]),
        "checkpoint": ckpt.digest,
        "threads": torch.get_num_threads(),
        "onnxruntime": ort.__version__,
        "matmul_gflops": round(rate / 1e9, 1),
        "rows": rows,
    }
    print("| rows | torch (ms) | onnxruntime (ms) | floor (ms) | onnxruntime / torch | max relative difference |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['rows']:,} | {r['torch_ms']:.3f} | {r['onnxruntime_ms']:.3f} | {r['floor_ms']:.3f} "
            f"| {r['onnxruntime_over_torch']:.2f} | {r['max_relative_difference']:.1e} |"
        )
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
