"""What a generated network is compared with: an individually trained network of the same width,
and L1-norm channel pruning of the pretrained network without fine-tuning (notes section 6a).

Training-side: the individual networks are trained from the checkpoint's builder (target.model)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from neumeta_core import export
from neumeta_core.checkpoint import Checkpoint
from neumeta_core.data import Split
from neumeta_core.errors import InputError
from neumeta_core.sampling import ratio_for
from neumeta_core.structure import load_builder
from neumeta_core.train import accuracy, pretrain


def l1_pruned(ckpt: Checkpoint, width: int) -> dict[str, torch.Tensor]:
    """The pretrained network with, in each channel group that follows the width, the channels of largest
    L1 norm kept: the norm of every weight (two or more dimensions) that writes the channel (axis 0), groups
    in network order. The pretrained BatchNorm statistics are pruned with them, not recalibrated."""
    if ckpt.teacher is None:
        raise InputError("this checkpoint holds no pretrained weights; retrain it")
    structure = ckpt.structure
    pruned = dict(ckpt.teacher)
    covered = set()
    position = {name: i for i, name in enumerate(structure.rules)}
    # in network order (a group's place: its first writer's in the state dict); each group's norms are taken
    # after the groups before it are pruned, so a layer's filters are judged on the inputs that remain
    groups = sorted(
        structure.hidden_groups().values(),
        key=lambda g: min(position[n] for n, axis, _ in g if axis == 0),
    )
    for group in groups:
        writers = [n for n, axis, _ in group if axis == 0 and pruned[n].dim() >= 2]
        first, axis, factor = group[0]
        channels = pruned[first].shape[axis] // factor
        norms = sum(pruned[n].abs().reshape(channels, -1).sum(dim=1) for n in writers)
        wanted = structure.rules[first].at(width)[axis] // factor
        keep = torch.as_tensor(norms).topk(wanted).indices.sort().values
        for name, ax, f in group:
            idx = (keep[:, None] * f + torch.arange(f)).reshape(-1)
            pruned[name] = pruned[name].index_select(ax, idx)
            covered.add((name, ax))
    missing = [(n, a) for n in structure.generated for a in structure.rules[n].axes if (n, a) not in covered]
    if missing:
        raise InputError(f"{missing[0][0]} follows the width outside any permutable channel group: no L1 baseline")
    return {**ckpt.morph.fixed, **pruned}


def onnx_accuracy(ckpt: Checkpoint, state: dict[str, torch.Tensor], width: int, split: Split) -> float:
    body = export.to_onnx(ckpt.graph(width), state)
    return export.accuracy(body, split.x_test.numpy(), split.y_test.numpy())


def individual(ckpt: Checkpoint, split: Split, width: int, seed: int, progress: bool = True) -> float:
    """Held-out accuracy of build(width) trained on its own with the teacher's recipe."""
    torch.manual_seed(seed)  # the initial weights too
    model = pretrain(load_builder(ckpt.target.model), replace(ckpt.train, seed=seed), split, width, progress)
    return accuracy(model, split.x_test, split.y_test)


def compare(
    ckpt: Checkpoint,
    split: Split,
    widths: list[int],
    samples: list[int],
    seeds: list[int],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per width: hypernetwork accuracy per K (and synthesis seconds) of the served ONNX file,
    individually trained (mean over `seeds`, none: skipped) and L1-pruned accuracy, parameter count, and
    whether training saw the width."""
    t, morph = ckpt.target, ckpt.morph
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
                started = time.perf_counter()
                state = morph.state_dict(width, samples=k)
                row[f"synthesis_seconds_k{k}"] = time.perf_counter() - started
                row[f"neumeta_k{k}"] = onnx_accuracy(ckpt, state, width, split)
        if ckpt.teacher is not None:
            try:
                row["l1_pruned"] = onnx_accuracy(ckpt, l1_pruned(ckpt, width), width, split)
            except InputError as exc:  # a width axis outside every permutable group: no such baseline
                row["l1_pruned_unavailable"] = str(exc)
        if seeds:
            runs = [individual(ckpt, split, width, seed, progress) for seed in seeds]
            row["individual"] = float(np.mean(runs))
            row["individual_runs"] = runs
        rows.append(row)
    return rows
