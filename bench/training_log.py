"""Loss and probe accuracy against step, from the JSON-lines log of `neumeta train` (OUT.log.jsonl), as a PNG.

    .venv/bin/python bench/training_log.py RUN.pt.log.jsonl [--out RUN.png] [--compare OTHER.log.jsonl ...]

One row of panels per phase (the teacher, the warm start, the hypernetwork), loss on the left and accuracy at the
probe width on the right (the teacher's own width in its phase, the smallest trained width after it); `--compare`
draws other runs' logs on the same axes (for example a two-process run against a one-process run). A resumed run
appends to its log: a step seen twice is drawn once, at its last value. Prints each phase's steps/s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def read(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The log's records by phase, in order, a step logged again (after a resume) kept at its last value."""
    phases: dict[str, dict[int, dict[str, Any]]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
            phases.setdefault(str(record["phase"]), {})[int(record["step"])] = record
        except (ValueError, KeyError, TypeError):
            raise SystemExit(f"training_log: {path}:{n} is not a log line of neumeta train") from None
    return {phase: [steps[s] for s in sorted(steps)] for phase, steps in phases.items()}


def plot(runs: dict[str, dict[str, list[dict[str, Any]]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = list(dict.fromkeys(p for run in runs.values() for p in run))
    fig, axes = plt.subplots(len(phases), 2, figsize=(11, 3.2 * len(phases)), squeeze=False)
    for row, phase in enumerate(phases):
        loss_ax, acc_ax = axes[row]
        for label, run in runs.items():
            records = run.get(phase, [])
            steps = [r["step"] for r in records]
            loss_ax.plot(steps, [r["loss"] for r in records], label=label)
            scored = [r for r in records if r.get("accuracy") is not None]
            if scored:
                acc_ax.plot([r["step"] for r in scored], [r["accuracy"] for r in scored], marker=".", label=label)
        loss_ax.set_title(f"{phase}: loss")
        widths = {int(r["probe_width"]) for run in runs.values() for r in run.get(phase, []) if r.get("probe_width")}
        where = f"h = {', '.join(map(str, sorted(widths)))}" if widths else "the probe width"
        acc_ax.set_title(f"{phase}: held-out accuracy at {where} (%)")
        for ax in (loss_ax, acc_ax):
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", type=Path)
    p.add_argument("--compare", type=Path, nargs="*", default=[], help="other runs' logs on the same axes")
    p.add_argument("--out", type=Path, help="default: the log's name with .png")
    args = p.parse_args(argv)
    runs = {}
    for path in [args.log, *args.compare]:
        if not path.is_file():
            print(f"training_log: {path}: no such file", file=sys.stderr)
            return 2
        runs[path.name] = read(path)
    for label, run in runs.items():
        for phase, records in run.items():
            last = records[-1]
            print(f"{label}  {phase}: {last['step']}/{last['steps']} steps, {last['steps_per_second']} steps/s")
    out = args.out or args.log.with_suffix(".png")
    plot(runs, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
