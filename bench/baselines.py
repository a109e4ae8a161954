"""Train the baseline runs of one of our recipes before (or without) its hypernetwork: the individually trained
networks at each width and seed, and the universally slimmable network, each cached the moment it finishes in
the same place `neumeta eval --baselines --cache DIR` reads them from. The runs depend only on the builder, the
data, the teacher's recipe, the seed and the width, so the sweep can run beside the hypernetwork's training.

    .venv/bin/python bench/baselines.py --model fashion --seeds 0 1 2 --jobs 2 \\
        --cache docs/results/fashion_mnist/runs

Rerun the same command after an interruption: finished runs are not trained again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from neumeta_core import baselines, data
from neumeta_core.builders import NAMES
from neumeta_core.config import presets
from neumeta_core.sampling import unseen_widths, width_for

GRID = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=NAMES, required=True)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--widths", type=int, nargs="*", help="besides the grid and the unseen widths")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-slimmable", action="store_true")
    parser.add_argument("--cache", type=Path, default=baselines.default_cache())
    args = parser.parse_args()
    torch.set_num_threads(1)
    target, _, train = presets(args.model)
    widths = {width_for(r, target.max_width) for r in GRID} | set(unseen_widths(target)) | set(args.widths or [])
    split = data.load(target.dataset, args.data_dir)
    source = (target.dataset, None if args.data_dir is None else str(args.data_dir))
    plan = baselines.Plan(
        target,
        train,
        split,
        sorted(widths, reverse=True),
        args.seeds,
        baselines.Runs(args.cache),
        not args.no_slimmable,
        source,
    )
    print(f"{len(plan.missing())} of {plan.total()} runs to train, into {args.cache}", file=sys.stderr)
    plan.run(args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
