"""How many distinct channels a synthesised network really has: for each generated weight of a checkpoint at
one width, the effective rank (exp of the entropy of the normalised squared singular values of the weight as
an out-channels x rest matrix) and the mean cosine similarity of neighbouring output channels, beside the
same for the pretrained (permuted) teacher. A hypernetwork that emits too smooth a function of position
gives near-copies of each channel: a wide network that computes like a narrow one.

    .venv/bin/python bench/effective_rank.py runs/runF5.pt --width 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from neumeta_core import checkpoint
from neumeta_core.train import model_at


def effective_rank(weight: torch.Tensor) -> float:
    s = torch.linalg.svdvals(weight.flatten(1).double())
    p = s**2 / (s**2).sum()
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


def neighbours(weight: torch.Tensor) -> float:
    rows = weight.flatten(1)
    return float(torch.nn.functional.cosine_similarity(rows[1:], rows[:-1]).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--width", type=int, help="default: h_max, where the teacher is comparable")
    args = parser.parse_args()
    ckpt = checkpoint.load(args.checkpoint)
    width = args.width or ckpt.target.max_width
    state = model_at(ckpt, width).state_dict()
    teacher = ckpt.teacher if width == ckpt.target.max_width else None
    print(f"{args.checkpoint} at h = {width}")
    print("| weight | out channels | effective rank | neighbour cosine | teacher's rank | teacher's cosine |")
    print("|---|---|---|---|---|---|")
    for name in ckpt.structure.generated:
        w = state[name]
        if w.dim() < 2:
            continue
        theirs = f"{effective_rank(teacher[name]):.1f} | {neighbours(teacher[name]):.2f}" if teacher else "n/a | n/a"
        print(f"| {name} | {w.shape[0]} | {effective_rank(w):.1f} | {neighbours(w):.2f} | {theirs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
