"""What a generated network is compared with: an individually trained network of the same width,
and L1-norm channel pruning of the pretrained network without fine-tuning (notes section 6a)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from neumeta_core.checkpoint import Checkpoint
from neumeta_core.data import Split
from neumeta_core.errors import InputError
from neumeta_core.sampling import ratio_for
from neumeta_core.train import accuracy, pretrain


def l1_pruned(ckpt: Checkpoint, width: int) -> dict[str, torch.Tensor]:
    """The pretrained network with, in each morphable layer, the hidden channels of largest L1 norm
    (of the weights that produce them) kept."""
    if ckpt.teacher is None:
        raise InputError("this checkpoint holds no pretrained weights for the generated tensors; retrain it")
    pruned = dict(ckpt.teacher)
    for group in ckpt.morph.family.hidden_groups(ckpt.target).values():
        first = next(iter(group))  # the tensor whose output channels the group is
        norms = pruned[first].abs().flatten(1).sum(dim=1)  # one L1 norm per hidden channel
        wanted = ckpt.morph.shapes(width)[first][0]  # h, or 2h for a layer twice as wide
        keep = norms.topk(wanted).indices.sort().values
        pruned.update({n: pruned[n].index_select(axis, keep) for n, axis in group.items()})
    state = {**ckpt.morph.fixed, **pruned}
    if not ckpt.target.batchnorm:
        return state
    model = ckpt.morph.family.generated_net(ckpt.target, width)  # the pretrained statistics, pruned: not recalibrated
    model.load_state_dict(state)
    return ckpt.morph.family.fold(model.eval())


def individual(ckpt: Checkpoint, split: Split, width: int, seed: int, progress: bool = True) -> float:
    """Held-out accuracy of a network of `width` trained on its own with the teacher's recipe."""
    torch.manual_seed(seed)  # the initial weights too
    model = pretrain(ckpt.target, replace(ckpt.train, seed=seed), split, progress, width)
    return accuracy(model, split.x_test, split.y_test)


def compare(
    ckpt: Checkpoint,
    split: Split,
    widths: list[int],
    samples: list[int],
    seeds: list[int],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per width: hypernetwork accuracy per K (and synthesis seconds), individually
    trained (mean over `seeds`, none: skipped) and L1-pruned accuracy, parameter count, and
    whether training saw the width."""
    t, morph = ckpt.target, ckpt.morph
    default_k = morph.samples
    rows = []
    for width in widths:
        row: dict[str, Any] = {
            "width": width,
            "ratio": ratio_for(width, t.max_width),
            "params": morph.param_count(width),
            "seen_in_training": width in t.trained_widths(),
            "served": t.min_width <= width <= t.max_width,
        }
        with morph.allowing(width):  # widths below the served range are measured too
            for k in samples:
                morph.samples = k
                started = time.perf_counter()
                model = morph.synthesize(width)
                row[f"synthesis_seconds_k{k}"] = time.perf_counter() - started
                row[f"neumeta_k{k}"] = accuracy(model, split.x_test, split.y_test)
        morph.samples = default_k
        if ckpt.teacher is not None:
            pruned = morph.family.build(t, width)
            pruned.load_state_dict(l1_pruned(ckpt, width))
            row["l1_pruned"] = accuracy(pruned, split.x_test, split.y_test)
        if seeds:
            runs = [individual(ckpt, split, width, seed, progress) for seed in seeds]
            row["individual"] = sum(runs) / len(runs)
            row["individual_runs"] = runs
        rows.append(row)
    return rows
