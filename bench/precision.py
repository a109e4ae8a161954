"""The accuracy effect of the hypernetwork's arithmetic precision (NEUMETA_PRECISION), side by side.

    .venv/bin/python bench/precision.py [--device cpu|cuda]

For each precision the device offers (CPU: float32, bfloat16; CUDA: float32, tf32, bfloat16), the
bundled checkpoint's models at every γ of the paper's grid and the unseen widths are synthesised,
exported to ONNX and scored on the held-out digits with onnxruntime; also the largest weight change
against float32 and the synthesis time at full width (fastest of 3). Writes
docs/results/precision{,-DEVICE}.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from neumeta_core import checkpoint, export
from neumeta_core.data import digits
from neumeta_core.hypernet import set_precision
from neumeta_core.sampling import unseen_widths, width_for

ROOT = Path(__file__).resolve().parent.parent
RATIOS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    ckpt = checkpoint.load(checkpoint.BUNDLED, device)
    morph, t = ckpt.morph, ckpt.target
    widths = sorted({width_for(r, t.max_width) for r in RATIOS} | set(unseen_widths(t)), reverse=True)
    precisions = ["float32", "tf32", "bfloat16"] if device.type == "cuda" else ["float32", "bfloat16"]
    split = digits()
    x, y = split.x_test.numpy(), split.y_test.numpy()
    set_precision("float32")
    reference = {w: morph.state_dict(w) for w in widths}
    rows = []
    for precision in tqdm(precisions, desc="precisions"):
        set_precision(precision)  # process-wide, as the service sets it once at start-up
        accuracy, change = {}, 0.0
        for w in widths:
            state = morph.state_dict(w, precision)
            change = max(change, max(float((state[k] - reference[w][k]).abs().max()) for k in state))
            accuracy[w] = round(export.accuracy(export.to_onnx(ckpt.graph(w), state), x, y), 2)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            morph.state_dict(t.max_width, precision)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
        row = {"precision": precision, "accuracy": accuracy, "max_weight_change": change}
        rows.append({**row, "ms": round(best * 1e3, 2)})
    print(f"\n{device}: held-out accuracy (%) per width h; K = {morph.samples}\n")
    print("| precision | " + " | ".join(f"h={w}" for w in widths) + " | max weight change | synthesis h=32 (ms) |")
    print("|---|" + "---|" * (len(widths) + 2))
    for r in rows:
        cells = " | ".join(f"{r['accuracy'][w]:.2f}" for w in widths)
        print(f"| {r['precision']} | {cells} | {r['max_weight_change']:.2e} | {r['ms']:.1f} |")
    out = ROOT / "docs" / "results" / ("precision.json" if device.type == "cpu" else f"precision-{device.type}.json")
    record = {"command": "python bench/precision.py " + " ".join(sys.argv[1:]), "device": str(device), "rows": rows}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
