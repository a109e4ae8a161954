"""A probe for the next recipe (docs/results/fashion_mnist/notebook.md): the hypernetwork generates a
correction to the teacher resampled to each width (the nearest teacher channels, the warm start's goal)
instead of the weights themselves, its output layers zeroed so that training starts at the resampled teacher.
Not served: the checkpoint format does not know the idea yet; this measures it in process, on the test set,
each width's BatchNorm statistics recalibrated on 2,048 training images.

    .venv/bin/python bench/probe_residual.py --model fashion --steps 3000
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from neumeta_core import baselines, data, permute
from neumeta_core.config import presets
from neumeta_core.hypernet import ResidualMLP
from neumeta_core.train import HypernetTrainer, network, recalibrated_accuracy, resample

WIDTHS = (32, 28, 27, 24, 20, 16, 13, 12, 10, 8, 6)


def interpolated(
    teacher: dict[str, torch.Tensor], axes: dict[str, tuple[int, ...]], shapes: dict[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """The teacher at the sizes `shapes`, each width axis sampled at the cell centres of n channels by linear
    interpolation between the neighbouring teacher channels (identity at n = N; continuous in n); input axes
    rescaled by N / n as in train.resample."""
    out = {}
    for name, tensor in teacher.items():
        for axis in axes.get(name, ()):
            n, big = shapes[name][axis], tensor.shape[axis]
            pos = ((torch.arange(n) + 0.5) * big / n - 0.5).clamp(0, big - 1)
            lo = pos.floor().long()
            hi = (lo + 1).clamp(max=big - 1)
            frac = (pos - lo).to(tensor.dtype).reshape([-1 if d == axis else 1 for d in range(tensor.dim())])
            mixed = tensor.index_select(axis, lo) * (1 - frac) + tensor.index_select(axis, hi) * frac
            tensor = mixed * (big / n if axis == 1 else 1.0)
        out[name] = tensor
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--cache", default="docs/results/fashion_mnist/runs")
    parser.add_argument("--base", choices=["nearest", "linear"], default="nearest", help="how the teacher is resampled")
    args = parser.parse_args()
    torch.set_num_threads(1)
    target, hyper, cfg = presets(args.model)
    cfg = replace(cfg, steps=args.steps, warm_steps=0)
    split = data.load(target.dataset, None)
    net = network(target, split.input_shape, split.classes)
    teacher, record, _ = baselines.teacher(target, cfg, split, baselines.Runs(Path(args.cache)))
    torch.manual_seed(cfg.seed + 1)
    smoothing = permute.smooth(dict(teacher.state_dict()), net.structure.hidden_groups())
    trainer = HypernetTrainer(target, hyper, cfg, net, smoothing.state)
    for mlp in trainer.hypernet.mlps:
        assert isinstance(mlp, ResidualMLP)
        nn.init.zeros_(mlp.out.weight)
        nn.init.zeros_(mlp.out.bias)
    plain = trainer._generate

    def corrected(width: int, noise: bool = True) -> dict[str, torch.Tensor]:
        base = (resample if args.base == "nearest" else interpolated)(
            trainer.teacher, trainer.axes, trainer.structure.shapes(width)
        )
        return {n: base[n] + w for n, w in plain(width, noise).items()}

    trainer._generate = corrected  # type: ignore[method-assign]
    ema = trainer.task(split, progress=True)
    trainer.hypernet.load_state_dict(ema.module.state_dict())
    out = {}
    for h in WIDTHS:
        with torch.no_grad():
            out[h] = recalibrated_accuracy(net.build, h, {**trainer.fixed, **corrected(h, noise=False)}, split)
        print(f"h={h:3d} acc={out[h]:.2f}", flush=True)
    print(json.dumps({"steps": args.steps, "base": args.base, "teacher": record["accuracy"], "accuracy": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
