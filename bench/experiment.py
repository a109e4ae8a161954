"""One lab-notebook run: `neumeta train` with the given flags, then held-out accuracy at every width
of interest, appended as a row to docs/results/experiments.md (and the raw numbers to
experiments.jsonl beside it). Failures are rows too: a crashed run is recorded with its error.

    .venv/bin/python bench/experiment.py --run 7 --change "centred, no sizes" -- \\
        --model digits_full --seed 0 --centred --no-sizes

The checkpoint goes to runs/ (ignored by git). Widths: gamma = 0 / 0.25 / 0.5 / 0.75 (h = 32 / 24 /
16 / 8), the rest of the acceptance grid (28, 20, 12), widths training never drew between trained
ones (27, 13), and below (10 when untrained, 6, 4).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from neumeta_core import checkpoint, data
from neumeta_core.structure import load_builder
from neumeta_core.train import accuracy, measure, model_at

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "results" / "experiments.md"
WIDTHS = (32, 28, 27, 24, 20, 16, 13, 12, 10, 8, 6, 4)
HEADLINE = (32, 24, 16, 8)  # gamma = 0, 0.25, 0.5, 0.75


def evaluate(path: Path, samples: int | None = None, lattice: bool | None = None) -> dict[int, float]:
    ckpt = checkpoint.load(path)
    stored = (ckpt.morph.samples, ckpt.morph.lattice)
    ckpt.morph.samples = samples or ckpt.morph.samples
    ckpt.morph.lattice = ckpt.morph.lattice if lattice is None else lattice
    split = data.load(ckpt.target.dataset, None)
    if ckpt.calibration is not None and (ckpt.morph.samples, ckpt.morph.lattice) != stored:
        # the BatchNorm statistics are stored per K as training measured them: measure them for this K, on the
        # images training measured on (the first statistics_images of the training set, else the kept ones)
        images = split.x_train[: ckpt.train.statistics_images] if ckpt.train.statistics_images else ckpt.calibration
        measure(ckpt.morph, load_builder(ckpt.target.model), images)
    widths = [h for h in WIDTHS if h >= ckpt.morph.lowest]  # below the served range too, where stored
    return {h: accuracy(model_at(ckpt, h), split.x_test, split.y_test) for h in widths}


def row(run: str, change: str, command: str, acc: dict[int, float] | None, seconds: float, trained: str) -> str:
    if acc is None:
        cells = ["failed"] * (len(HEADLINE) + 1) + ["n/a"]
    else:
        unseen = " / ".join(f"{acc[h]:.1f}" for h in (27, 13))
        below = " / ".join(f"{acc[h]:.1f}" for h in (6, 4))
        cells = [f"{acc[h]:.1f}" for h in HEADLINE] + [unseen, below]
    return f"| {run} | {change} | {command} | {trained} | " + " | ".join(cells) + f" | {seconds / 60:.1f} |\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run id, e.g. 7 or 7b")
    parser.add_argument("--change", required=True, help="what this run changes, in words")
    parser.add_argument("--checkpoint", type=Path, help="evaluate this earlier run's checkpoint again, no training")
    parser.add_argument("--samples", type=int, help="with --checkpoint: K at inference")
    parser.add_argument("--lattice", action="store_true", default=None, help="with --checkpoint: K on a lattice")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK, help=f"default {NOTEBOOK.relative_to(ROOT)}")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then the flags for neumeta train")
    args = parser.parse_args()
    flags = [f for f in args.flags if f != "--"]
    started = time.time()
    if args.checkpoint:  # a re-evaluation at another K: no training time
        out, returncode = args.checkpoint, 0
        lattice = " --lattice" if args.lattice else ""
        samples = f" --samples {args.samples}" if args.samples else ""
        command = f"`bench/experiment.py --checkpoint {args.checkpoint}{samples}{lattice}`"
    else:
        command = "`neumeta train " + " ".join(shlex.quote(f) for f in flags) + "`"
        out = ROOT / "runs" / f"run{args.run}.pt"
        out.parent.mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "service.cli", "train", *flags, "--out", str(out)]
        returncode = subprocess.run(argv, cwd=ROOT, check=False).returncode
    acc = evaluate(out, args.samples, args.lattice) if returncode == 0 else None
    seconds = time.time() - started
    trained, teacher = "n/a", dict[str, object]()
    if acc is not None:
        ckpt = checkpoint.load(out)
        trained = ckpt.target.trained_description()
        meta = ckpt.metadata
        teacher = {"teacher_accuracy": round(meta["teacher_accuracy"], 2), "teacher_cached": meta.get("teacher_cached")}
        if meta.get("teacher_cached") and not args.checkpoint:
            seconds += meta["teacher_seconds"]  # the run's whole cost: its teacher was trained by an earlier one
    with args.notebook.open("a") as f:
        f.write(row(args.run, args.change, command, acc, seconds, trained))
    record = {"run": args.run, "change": args.change, "flags": flags, "seconds": round(seconds, 1), **teacher}
    record["accuracy"] = acc if acc is not None else f"failed, exit status {returncode}"
    with args.notebook.with_suffix(".jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    return returncode


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
