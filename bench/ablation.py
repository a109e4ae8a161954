"""Ablation of the recipe on digits: one checkpoint per variant, each made by `neumeta train`
with one part of the recipe switched off, evaluated on the same widths as served ONNX models.

    .venv/bin/python bench/ablation.py final=A.pt "no permutation=B.pt" "no noise=C.pt" "no KD=D.pt"

Each checkpoint carries its own training configuration, printed next to its accuracies.
Writes docs/results/ablation.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from neumeta_core import checkpoint, export
from neumeta_core.data import digits
from neumeta_core.sampling import unseen_widths, width_for

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
GRID = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


def evaluate(name: str, path: Path, widths: list[int]) -> dict[str, Any]:
    ckpt = checkpoint.load(path)
    split = digits()
    x, y = split.x_test.numpy(), split.y_test.numpy()
    acc = {}
    for width in tqdm(widths, desc=name, leave=False):
        acc[width] = export.accuracy(export.to_onnx(ckpt.graph(width), ckpt.morph.state_dict(width)), x, y)
    t = ckpt.train
    recipe = {"permute": t.permute, "coord_noise": t.coord_noise, "kd_weight": t.kd_weight, "samples": t.samples}
    return {"variant": name, "checkpoint": ckpt.digest, "recipe": recipe, "accuracy": acc}


def markdown(rows: list[dict[str, Any]], widths: list[int], trained: set[int]) -> str:
    head = " | ".join(f"h={w}" + ("" if w in trained else " (unseen)") for w in widths)
    lines = [f"| variant | permute | noise | KD | {head} | mean |", "|---" * (5 + len(widths)) + "|"]
    for r in rows:
        rec, acc = r["recipe"], r["accuracy"]
        cells = [f"{acc[w]:.2f}" for w in widths] + [f"{sum(acc.values()) / len(acc):.2f}"]
        lines.append(
            f"| {r['variant']} | {rec['permute']} | {rec['coord_noise']:g} | {rec['kd_weight']:g} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], widths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        ax.plot(widths, [r["accuracy"][w] for w in widths], marker="o", ms=4, label=r["variant"])
    ax.set(xlabel="hidden width h", ylabel="held-out accuracy (%)", title="digits CNN: recipe ablation")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", help="NAME=CHECKPOINT, the first is the reference")
    p.add_argument("--name", default="ablation", help="output file stem in docs/results/")
    args = p.parse_args()
    torch.set_num_threads(2)
    pairs = [v.split("=", 1) for v in args.variants]
    first = checkpoint.load(pairs[0][1]).target
    widths = sorted({width_for(r, first.max_width) for r in GRID} | set(unseen_widths(first)), reverse=True)
    rows = [evaluate(name, Path(path), widths) for name, path in pairs]
    table = markdown(rows, widths, set(first.trained_widths()))
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / args.name
    out.with_suffix(".json").write_text(json.dumps({"widths": widths, "rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(table)
    plot(rows, widths, out.with_suffix(".png"))
    print(f"wrote {out}.md, .json and .png")


if __name__ == "__main__":
    main()
