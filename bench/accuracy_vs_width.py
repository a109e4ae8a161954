"""Held-out accuracy and synthesis time of served (ONNX) models at every width, for K samples.

    .venv/bin/python bench/accuracy_vs_width.py [--checkpoint PATH] [--samples 1 4 9]

Every width from 4 (below what the bundle serves, to show where quality ends) to h_max.
Prints a table, writes docs/results/accuracy_vs_width.json and .png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from neumeta_core import checkpoint, export
from neumeta_core.data import digits
from neumeta_core.sampling import ratio_for

LOWEST = 4  # measured even where the checkpoint does not serve
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
REPEATS = 3


def measure(ckpt: checkpoint.Checkpoint, samples: list[int]) -> list[dict[str, float]]:
    split = digits()
    x, y = split.x_test.numpy(), split.y_test.numpy()
    t = ckpt.target
    lowest = max(ckpt.morph.lowest, min(LOWEST, t.min_width))
    rows = []
    for k in samples:
        ckpt.morph.samples = k
        for width in tqdm(range(lowest, t.max_width + 1), desc=f"K={k}"):
            seconds = float("inf")
            for _ in range(REPEATS):  # the fastest of a few: the least disturbed by other processes
                started = time.perf_counter()
                with ckpt.morph.allowing(lowest):
                    state = ckpt.morph.state_dict(width)
                seconds = min(seconds, time.perf_counter() - started)
            body = export.to_onnx(ckpt.graph(width), state)
            acc = export.accuracy(body, x, y)
            ratio = ratio_for(width, t.max_width)
            rows.append({"samples": k, "width": width, "ratio": ratio, "accuracy": acc, "seconds": seconds})
    return rows


def summary(rows: list[dict[str, float]], ckpt: checkpoint.Checkpoint) -> list[dict[str, float]]:
    """Per K: mean accuracy over the trained widths and over the unseen ones, and synthesis time."""
    trained = set(ckpt.target.trained_widths())
    out = []
    for k in sorted({int(r["samples"]) for r in rows}):
        sel = [r for r in rows if r["samples"] == k]
        seen = [r["accuracy"] for r in sel if r["width"] in trained]
        unseen = [r["accuracy"] for r in sel if r["width"] not in trained]
        full = next(r for r in sel if r["width"] == ckpt.target.max_width)
        out.append(
            {
                "samples": k,
                "mean_accuracy_trained_widths": sum(seen) / len(seen),
                "mean_accuracy_unseen_widths": sum(unseen) / len(unseen),
                "min_accuracy": min(r["accuracy"] for r in sel),
                "synthesis_ms_full_width": 1e3 * full["seconds"],
            }
        )
    return out


def plot(rows: list[dict[str, float]], ckpt: checkpoint.Checkpoint, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for k in sorted({int(r["samples"]) for r in rows}):
        sel = [r for r in rows if r["samples"] == k]
        ax.plot([r["width"] for r in sel], [r["accuracy"] for r in sel], marker="o", ms=3, label=f"K = {k}")
    t = ckpt.target
    teacher = ckpt.metadata.get("teacher_accuracy")
    if teacher is not None:
        ax.axhline(teacher, color="k", ls="--", lw=1, label=f"pretrained teacher, h={t.max_width}")
    ax.axvspan(
        t.train_min_width,
        t.max_width,
        color="0.9",
        label=f"trained: h = {t.train_min_width}..{t.max_width} step {t.train_stride}",
    )
    if t.min_width > LOWEST:
        ax.axvline(t.min_width - 0.5, color="r", lw=1, ls=":", label=f"served: h >= {t.min_width}")
    ax.set(xlabel="hidden width h (gamma = 1 - h/32)", ylabel="held-out accuracy (%)", ylim=(0, 100))
    ax.set_title(f"digits, served ONNX models from one checkpoint ({ckpt.digest[:12]})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, default=checkpoint.BUNDLED)
    p.add_argument("--samples", type=int, nargs="+", default=[1, 4, 9])
    args = p.parse_args()
    torch.set_num_threads(2)
    ckpt = checkpoint.load(args.checkpoint)
    rows = measure(ckpt, args.samples)
    print("| K | width | ratio | accuracy (%) | synthesis (ms) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['samples']} | {r['width']} | {r['ratio']:.3f} | {r['accuracy']:.2f} | {1e3 * r['seconds']:.1f} |")
    table = summary(rows, ckpt)
    print(
        "\n| K | mean accuracy, trained widths | mean accuracy, unseen widths | worst width | synthesis at h_max (ms) |"
    )
    print("|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['samples']} | {r['mean_accuracy_trained_widths']:.2f} | {r['mean_accuracy_unseen_widths']:.2f} "
            f"| {r['min_accuracy']:.2f} | {r['synthesis_ms_full_width']:.1f} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"checkpoint": ckpt.digest, "summary": table, "rows": rows}
    (RESULTS / "accuracy_vs_width.json").write_text(json.dumps(payload, indent=1))
    plot(rows, ckpt, RESULTS / "accuracy_vs_width.png")
    print(f"wrote {RESULTS / 'accuracy_vs_width.json'} and .png")


if __name__ == "__main__":
    main()
