"""Total variation along the channels, per channel group, before and after the permutation.

    .venv/bin/python bench/total_variation.py [--checkpoint PATH]

Every group of the digits CNN (stem outputs, residual stream, the block's hidden channels) is
permuted afresh on the checkpoint's pretrained weights (fixed tensors and the generated block's
teacher), so the reduction each group would get is visible, not only the group the checkpoint
was trained with; for that one the figures recorded at training time (from the original channel
order) are reported. Writes docs/results/total_variation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neumeta_core import checkpoint, permute, report

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=checkpoint.BUNDLED)
    args = p.parse_args()
    ckpt = checkpoint.load(args.checkpoint)
    if ckpt.teacher is None:
        raise SystemExit("this checkpoint holds no pretrained weights for the generated tensors")
    state = {**ckpt.morph.fixed, **ckpt.teacher}
    groups = ckpt.structure.groups
    smoothing = permute.smooth(state, groups)
    tv = {g: {"before": b, "after": a} for g, (b, a) in smoothing.total_variation.items()}
    tv.update(ckpt.metadata.get("total_variation", {}))  # groups the checkpoint permuted: from the original order
    table = report.total_variation(tv)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "total_variation.json").write_text(json.dumps({"checkpoint": ckpt.digest, "groups": tv}, indent=1))
    (RESULTS / "total_variation.md").write_text(table)


if __name__ == "__main__":
    main()
