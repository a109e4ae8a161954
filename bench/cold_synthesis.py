"""Cold synthesis, stage by stage, against the floor the hardware sets, per width and per K.

    .venv/bin/python bench/cold_synthesis.py [--checkpoint PATH] [--device cpu|cuda] [--repeats 5]
    .venv/bin/python bench/cold_synthesis.py --bound docs/results/cold_synthesis_xeon.json   # from a run's JSON

A synthesis (service/synthesis.py) is: lay out the width's plan (the coordinates of every generated weight, K
copies, Fourier features, in separable form where the K sets allow; groups and tiles; neumeta_core/plan.py; done
once per width when the service loads, MorphicNet.prepare, with the onnxruntime session that checks the width's
files), run the hypernetwork's MLPs on them (the forward, as the service runs it, the mean over K included),
assemble the state (the fixed tensors and the BatchNorm statistics measured at training time added), fill the
stored ONNX graph (BatchNorm folded), and verify the file (read back, it must hold the graph and the weights; the
width's session computes its logits, checked against the checkpoint's reference logits). Each stage is timed
with the functions the service calls, taking the fastest of --repeats; "cold" is what a request for a width not
yet cached runs, "unprepared" adds what is made at load.

The floor: the MLPs' multiply-adds (HyperNetwork.flops: every query through every layer) divided by the float32
matmul rate measured on the same device in the same run (a 2048x2048 torch.mm, the fastest of several). time /
floor says how far the synthesis is from what the device allows for that arithmetic. A separable first layer
does less than the floor counts: `performed_gflop` is what the plan's matmuls do (Plan.flops), and
`cold_over_performed` the cold time against that arithmetic at the same rate.

Where the forward's time goes: at the smallest and the largest served width, torch's profiler over --repeats
forwards, each operator's own time per synthesis, summed into matmuls (what the floor counts), the element-wise
passes (ELU, the residual adds) and the rest (copies, sums, views); `forward_by_operator` in the JSON. The
profiler adds its own cost per operator, so read these as shares, not as times.

Writes docs/results/cold_synthesis{,-DEVICE}.json and .png (the CPU run has no suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from neumeta_core import checkpoint, export, files
from neumeta_core.checkpoint import Checkpoint
from neumeta_core.hypernet import ResidualMLP
from neumeta_core.plan import Plan
from neumeta_core.report import cpu_name

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
STAGES = ("encode", "forward", "assemble", "onnx", "verify")
REQUEST = STAGES[1:]  # what a request runs: the encoding is made once per width at load (MorphicNet.prepare)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - started)
    return best, result


def matmul_rate(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """float32 FLOP/s of an n x n matmul on `device` (the fastest of `repeats`)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)  # warm-up: thread pool, kernels
    seconds, _ = fastest(lambda: torch.mm(a, b), repeats, device)
    return 2 * n**3 / seconds


@torch.no_grad()
def stages(ckpt: Checkpoint, width: int, samples: int, repeats: int, probe: torch.Tensor) -> dict[str, float]:
    """Seconds per stage of one synthesis at `width` with K = `samples` (fastest of `repeats` each): the
    encoding, done once per width when the service loads (MorphicNet.prepare), and what a request runs."""
    morph, hyper = ckpt.morph, ckpt.morph.hypernet
    device = morph.device
    shapes = list(morph.shapes(width).values())
    noise = morph.noise if samples > 1 else 0.0

    def encode() -> Plan:
        gen = torch.Generator().manual_seed(morph.seed)
        return Plan(hyper, shapes, samples, noise, gen, morph.lattice)

    t_encode, plan = fastest(encode, repeats, device)
    morph.plan(width, samples)  # as the service prepares it at load, with the session that checks the files
    started = time.perf_counter()
    ckpt.graph(width).runner  # noqa: B018 (made once per width: 0 where an earlier row made it)
    t_encode += time.perf_counter() - started
    t_forward, generated = fastest(lambda: morph.generate(width, samples=samples), repeats, device)

    def assemble() -> dict[str, torch.Tensor]:
        return {**morph.fixed, **morph.stats(width, samples), **generated}  # statistics: measured at training

    t_assemble, state = fastest(assemble, repeats, device)
    graph = ckpt.graph(width)
    weights = export.served(graph, state)
    t_onnx, body = fastest(lambda: export.to_onnx(graph, state), repeats, device)  # folded, then filled
    spec = files.spec_for(ckpt, width, samples=samples)
    t_verify, _ = fastest(lambda: files.verify(ckpt, spec, body, weights, probe), repeats, device)
    # references for the forward: every query of this width through one dense MLP (the first tensor's), the
    # best the batching could do, with and without torch's ELU (the floor counts the matmuls only)
    gen = torch.Generator().manual_seed(morph.seed)
    raw = torch.cat([hyper.coordinates(shapes, t, samples, noise, gen, morph.lattice) for t in range(len(shapes))])
    x_all = hyper.features(raw.to(device))
    mlp = hyper.mlps[0]
    assert isinstance(mlp, ResidualMLP)
    layers = [mlp.inp, *mlp.hidden, mlp.out]

    def dense(activations: bool) -> torch.Tensor:
        z = x_all
        for i, layer in enumerate(layers):
            z = torch.nn.functional.linear(z, layer.weight, layer.bias)
            if activations and i < len(layers) - 1:
                z = torch.nn.functional.elu(z)
        return z

    t_dense, _ = fastest(lambda: dense(True), repeats, device)
    t_linear, _ = fastest(lambda: dense(False), repeats, device)
    # the path the service takes, end to end (plan prepared), to check the stages add up
    morph.plan(width, samples)
    t_total, _ = fastest(lambda: morph.state_dict(width, samples=samples), repeats, device)
    return {
        "encode": t_encode,
        "forward": t_forward,
        "assemble": t_assemble,
        "onnx": t_onnx,
        "verify": t_verify,
        "state_dict": t_total,
        "dense": t_dense,
        "dense_linear": t_linear,
        "flops": hyper.flops(shapes, samples),
        "performed": plan.flops(hyper.cfg.hidden, hyper.cfg.layers, hyper.cfg.output_dim),
    }


MATMULS = {"aten::addmm", "aten::addmm_", "aten::baddbmm", "aten::baddbmm_", "aten::mm", "aten::bmm"}
ELEMENTWISE = {
    "aten::exp2_", "aten::exp_", "aten::clamp_max", "aten::maximum", "aten::mul_", "aten::sub_", "aten::add_",
    "aten::add", "aten::addcmul_", "aten::elu_", "aten::elu",
}  # fmt: skip


def by_operator(ckpt: Checkpoint, width: int, samples: int, repeats: int) -> dict[str, Any]:
    """The forward at `width` under torch's profiler: ms per synthesis by kind of operator (see the module's notes),
    and the operators that took the most."""
    from torch.profiler import ProfilerActivity, profile

    morph = ckpt.morph
    morph.plan(width, samples)
    morph.generate(width, samples=samples)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            morph.generate(width, samples=samples)
    own = {e.key: (e.self_cpu_time_total / 1e3 / repeats, e.count // repeats) for e in prof.key_averages()}
    kinds = {"matmul": 0.0, "elementwise": 0.0, "other": 0.0}
    for name, (ms, _) in own.items():
        kinds["matmul" if name in MATMULS else "elementwise" if name in ELEMENTWISE else "other"] += ms
    top = sorted(own.items(), key=lambda item: -item[1][0])[:8]
    return {
        "width": width,
        "ms_by_kind": {k: round(v, 3) for k, v in kinds.items()},
        "operator_calls": sum(count for _, count in own.values()),
        "top": [{"operator": name, "ms": round(ms, 3), "calls": count} for name, (ms, count) in top],
    }


def fused_bound(r: dict[str, Any]) -> float:
    """cold / floor that no fusion of the element-wise passes can beat: the plan's matmuls (performed_gflop) at the
    rate of one dense MLP's matmuls over every query (the best these layers ran at), plus export and verification."""
    return (
        r["dense_matmuls_over_floor"] * r["performed_gflop"] / r["gflop"]
        + (r["onnx_ms"] + r["verify_ms"]) / r["floor_ms"]
    )


def row(ckpt: Checkpoint, width: int, samples: int, timings: dict[str, float], rate: float) -> dict[str, Any]:
    cold = sum(timings[s] for s in REQUEST)
    floor = timings["flops"] / rate
    out = {
        "width": width,
        "samples": samples,
        **{f"{s}_ms": round(timings[s] * 1e3, 3) for s in STAGES},
        "cold_ms": round(cold * 1e3, 3),
        "cold_unprepared_ms": round((cold + timings["encode"]) * 1e3, 3),
        "state_dict_ms": round(timings["state_dict"] * 1e3, 3),
        "dense_mlp_over_floor": round(timings["dense"] / floor, 2),
        "dense_matmuls_over_floor": round(timings["dense_linear"] / floor, 2),
        "gflop": round(timings["flops"] / 1e9, 4),
        "performed_gflop": round(timings["performed"] / 1e9, 4),
        "cold_over_performed": round(cold / (timings["performed"] / rate), 2),
        "floor_ms": round(floor * 1e3, 3),
        "synthesis_over_floor": round((timings["forward"] + timings["assemble"]) / floor, 2),
        "cold_over_floor": round(cold / floor, 2),
        "cold_unprepared_over_floor": round((cold + timings["encode"]) / floor, 2),
        "export_share": round((timings["onnx"] + timings["verify"]) / cold, 3),
    }
    out["fused_bound_over_floor"] = round(fused_bound(out), 2)
    return out


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    by_width = record["by_width"]
    xs = [r["width"] for r in by_width]
    bottom = [0.0] * len(xs)
    for stage in REQUEST:
        ys = [r[f"{stage}_ms"] for r in by_width]
        ax1.bar(xs, ys, bottom=bottom, label=stage, width=2.5)
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    ax1.plot(xs, [r["floor_ms"] for r in by_width], "k--", marker="o", label="floor (MLP FLOPs / matmul rate)")
    ax1.set_xlabel("width h")
    ax1.set_ylabel("ms")
    ax1.plot(xs, [2 * r["floor_ms"] for r in by_width], "k:", label="2x floor (the goal)")
    ax1.set_title(f"Cold synthesis vs width (K = {by_width[0]['samples']}, {record['device']}; encoding at load)")
    ax1.legend(fontsize=8)
    by_k = record["by_samples"]
    ks = [r["samples"] for r in by_k]
    ax2.plot(ks, [r["cold_ms"] for r in by_k], marker="o", label="cold synthesis")
    ax2.plot(ks, [r["forward_ms"] for r in by_k], marker="o", label="hypernetwork forward (grouped)")
    ax2.plot(ks, [r["floor_ms"] for r in by_k], "k--", marker="o", label="floor")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("K (noisy weight sets averaged)")
    ax2.set_ylabel("ms")
    ax2.set_title(f"Cold synthesis vs K (h = {by_k[0]['width']})")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=checkpoint.BUNDLED)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samples", type=int, nargs="+", default=[1, 2, 5, 10, 20], help="K values at full width")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--bound",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: print, per width of an earlier run's JSON, cold/floor and the bound no fusion of the "
        "element-wise passes can beat (fused_bound_over_floor)",
    )
    args = p.parse_args()
    if args.bound:
        record = json.loads(args.bound.read_text())
        print(f"{args.bound}: {record['machine']}; matmul {record['matmul_gflops']} GFLOP/s")
        print("| h | K | cold/floor | fused bound/floor |\n|---|---|---|---|")
        for r in record["by_width"]:
            print(f"| {r['width']} | {r['samples']} | {r['cold_over_floor']:.2f} | {fused_bound(r):.2f} |")
        return
    device = torch.device(args.device)
    ckpt = checkpoint.load(args.checkpoint, device)
    t = ckpt.target
    widths = sorted({t.min_width, *range(8, t.max_width + 1, 4), t.max_width})
    probe = ckpt.probe()
    stages(ckpt, t.max_width, ckpt.morph.samples, 1, probe)  # warm-up
    rate = matmul_rate(device)

    by_width: list[dict[str, Any]] = []
    by_samples: list[dict[str, Any]] = []
    plan = [(w, ckpt.morph.samples) for w in widths] + [(t.max_width, k) for k in args.samples]
    for n, (width, k) in enumerate(tqdm(plan, desc="syntheses", unit="config")):
        r = row(ckpt, width, k, stages(ckpt, width, k, args.repeats, probe), rate)
        (by_width if n < len(widths) else by_samples).append(r)
    profiled = [by_operator(ckpt, w, ckpt.morph.samples, args.repeats) for w in (widths[0], widths[-1])]
    rate_after = matmul_rate(device)

    record = {
        "command": "python bench/cold_synthesis.py " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_name()}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "checkpoint": ckpt.digest,
        "matmul_gflops": round(rate / 1e9, 1),
        "matmul_gflops_after": round(rate_after / 1e9, 1),
        "by_width": by_width,
        "by_samples": by_samples,
        "forward_by_operator": profiled,
    }
    print(f"\nmatmul rate {rate / 1e9:.1f} GFLOP/s (after: {rate_after / 1e9:.1f}), {record['device']}\n")
    head = "| h | K | plan (at load) | forward | assemble | onnx | verify | cold (ms) | floor (ms) | synthesis/floor | cold/floor | unprepared/floor | cold/performed | onnx+verify share | one dense MLP/floor | its matmuls/floor |"  # noqa: E501
    print(head + "\n|" + "---|" * 16)
    for r in by_width + by_samples:
        print(
            f"| {r['width']} | {r['samples']} | {r['encode_ms']:.2f} | {r['forward_ms']:.2f} | {r['assemble_ms']:.2f} "
            f"| {r['onnx_ms']:.2f} | {r['verify_ms']:.2f} | {r['cold_ms']:.2f} | {r['floor_ms']:.2f} "
            f"| {r['synthesis_over_floor']:.2f} | {r['cold_over_floor']:.2f} | {r['cold_unprepared_over_floor']:.2f} "
            f"| {r['cold_over_performed']:.2f} | {r['export_share']:.1%} | {r['dense_mlp_over_floor']:.2f} "
            f"| {r['dense_matmuls_over_floor']:.2f} |"
        )
    print("\nthe forward by kind of operator (torch profiler, ms per synthesis):")
    for f in profiled:
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in f["ms_by_kind"].items())
        print(f"  h = {f['width']}: {kinds}; {f['operator_calls']} operator calls")
    suffix = "" if device.type == "cpu" else f"-{device.type}"
    out = args.out or RESULTS / f"cold_synthesis{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    plot(record, out.with_suffix(".png"))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
