"""Accuracy and bytes of the served ONNX files per dtype (float32, float16, int8) at every gamma of the grid,
on a checkpoint's held-out set: the files `neumeta serve` sends (neumeta_core.files.build, verified as served),
run with onnxruntime. JSON, Markdown and a PNG (accuracy against bytes, one line per dtype).

    .venv/bin/python bench/dtypes.py --checkpoint neumeta_core/checkpoints/fashion.pt --out docs/results/fashion_mnist
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from neumeta_core import checkpoint, data, export, files
from neumeta_core.sampling import ratio_for, width_for

GRID = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
DTYPES = ("float32", "float16", "int8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=checkpoint.BUNDLED)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for dtypes.{json,md,png}")
    args = parser.parse_args()
    ckpt = checkpoint.load(args.checkpoint)
    split = data.load(ckpt.target.dataset, args.data_dir)
    x, y = split.x_test.numpy(), split.y_test.numpy()
    rows = []
    for ratio in tqdm(GRID, desc="gamma"):
        width = width_for(ratio, ckpt.target.max_width)
        row: dict[str, object] = {"ratio": ratio_for(width, ckpt.target.max_width), "width": width}
        row["params"] = ckpt.morph.param_count(width)
        for dtype in DTYPES:
            body = files.build(ckpt, files.spec_for(ckpt, width, dtype=dtype)).body
            row[f"{dtype}_bytes"] = len(body)
            row[f"{dtype}_accuracy"] = round(export.accuracy(body, x, y), 2)
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(args.checkpoint), "digest": ckpt.digest, "test_images": len(y), "rows": rows}
    (args.out / "dtypes.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"Served ONNX files of `{args.checkpoint.name}` by dtype, on the {len(y):,} held-out images "
        f"(`bench/dtypes.py`): accuracy (%) and bytes.",
        "",
        "| γ | width | parameters | float32 | float16 | int8 | int8 vs float32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[f'{d}_accuracy']:.2f} % · {r[f'{d}_bytes']:,} B" for d in DTYPES]
        cost = float(r["int8_accuracy"]) - float(r["float32_accuracy"])  # type: ignore[arg-type]
        ratio = int(r["float32_bytes"]) / int(r["int8_bytes"])  # type: ignore[call-overload]
        lines.append(
            f"| {r['ratio']:.3f} | {r['width']} | {r['params']:,} | " + " | ".join(cells) + f" | {cost:+.2f} pt, "
            f"{ratio:.2f}x smaller |"
        )
    (args.out / "dtypes.md").write_text("\n".join(lines) + "\n")
    plot(rows, args.out / "dtypes.png", ckpt.name)
    print("\n".join(lines))
    return 0


def plot(rows: list[dict[str, object]], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for dtype, marker in zip(DTYPES, "osd", strict=True):
        xs = [int(r[f"{dtype}_bytes"]) / 1024 for r in rows]  # type: ignore[call-overload]
        ys = [float(r[f"{dtype}_accuracy"]) for r in rows]  # type: ignore[arg-type]
        ax.plot(xs, ys, marker=marker, label=dtype)
    ax.set_xscale("log")
    ax.set_xlabel("bytes of the served ONNX file (KiB, log scale)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"{name}: served files by dtype, gamma 0..0.75")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
