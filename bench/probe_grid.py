"""A probe for the next recipe (docs/results/fashion_mnist/notebook.md, G rows): the weights at width n are a
learned full-width tensor per layer resampled to n channels by area averaging (each of the n channels is the mean
of the full-width channels its cell covers, input axes rescaled by N / n so fan-in sums keep their size; the
identity at n = N and continuous in n), plus, optionally, the hypernetwork's correction (zero-initialised output
layers). Trained as a universally slimmable network is (the sandwich rule: the largest, the smallest and two
random trained widths every step; in-place distillation; the teacher's optimiser, schedule and epochs), starting
from the smoothed teacher or from scratch. Not served; measured in process on the test set, each width's BatchNorm
statistics recalibrated on 2,048 training images.

    .venv/bin/python bench/probe_grid.py --init scratch --epochs 15
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from neumeta_core import baselines, data, permute
from neumeta_core.config import presets
from neumeta_core.hypernet import ResidualMLP, resampled
from neumeta_core.slimmable import shape_rules, soft_cross_entropy
from neumeta_core.structure import build_at
from neumeta_core.train import HypernetTrainer, batches, network, optimiser, recalibrated_accuracy

WIDTHS = (32, 28, 27, 24, 20, 16, 13, 12, 10, 8, 6, 5, 4)


def resampled_state(state: dict[str, torch.Tensor], rules: dict[str, Any], width: int) -> dict[str, torch.Tensor]:
    """Every tensor of `state` at `width` (hypernet.resampled: area averaging, exact cells)."""
    return {name: resampled(tensor, rules[name].at(width)) for name, tensor in state.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--epochs", type=float, default=15)
    parser.add_argument("--init", choices=["teacher", "scratch"], default="scratch")
    parser.add_argument("--mlp", action="store_true", help="add the hypernetwork's correction")
    parser.add_argument("--lr", type=float, default=0.0, help="default: the teacher's")
    parser.add_argument("--low", type=int, default=0, help="smallest trained width (default: the recipe's)")
    parser.add_argument("--cache", default="docs/results/fashion_mnist/runs")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    target, hyper, cfg = presets(args.model)
    if args.low:
        target = replace(target, train_min_width=args.low)
    cfg = replace(cfg, lr=args.lr or cfg.pretrain_lr)
    split = data.load(target.dataset, None)
    net = network(target, split.input_shape, split.classes)
    high, low = target.max_width, target.train_min_width
    trained = target.trained_widths()
    rules = shape_rules(net.build, low, high)
    torch.manual_seed(cfg.seed)
    full = build_at(net.build, high)
    if args.init == "teacher":
        teacher, _, _ = baselines.teacher(target, cfg, split, baselines.Runs(Path(args.cache)))
        state = permute.smooth(dict(teacher.state_dict()), net.structure.hidden_groups()).state
        full.load_state_dict(state)
    names = [n for n, _ in full.named_parameters()]
    grid = nn.ParameterDict({n.replace(".", "/"): nn.Parameter(p.detach().clone()) for n, p in full.named_parameters()})
    models = {w: build_at(net.build, w).train() for w in set(trained) | {high}}
    trainer = None
    if args.mlp:
        torch.manual_seed(cfg.seed + 1)
        trainer = HypernetTrainer(target, hyper, cfg, net, dict(full.state_dict()))
        for mlp in trainer.hypernet.mlps:
            assert isinstance(mlp, ResidualMLP)
            nn.init.zeros_(mlp.out.weight)
            nn.init.zeros_(mlp.out.bias)

    def weights(width: int, noise: bool = True) -> dict[str, torch.Tensor]:
        base = resampled_state({n: grid[n.replace(".", "/")] for n in names}, rules, width)
        if trainer is not None:
            for n, w in trainer._generate(width, noise).items():
                base[n] = base[n] + w
        return base

    params = list(grid.parameters()) + ([] if trainer is None else list(trainer.hypernet.parameters()))
    steps = int(args.epochs * (len(split.y_train) // cfg.batch_size))
    opt = optimiser(replace(cfg, pretrain_lr=cfg.lr), params)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    stream = batches(split, cfg.batch_size, gen)
    started = time.time()
    bar = tqdm(range(steps), desc=f"grid {args.init}{' + mlp' if args.mlp else ''}", mininterval=2.0)
    for _ in bar:
        x, y = next(stream)
        opt.zero_grad()
        logits = functional_call(models[high], weights(high), (x,))
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        soft = nn.functional.softmax(logits.detach(), dim=1)
        for width in [low, rng.choice(trained), rng.choice(trained)]:
            soft_cross_entropy(functional_call(models[width], weights(width), (x,)), soft).backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    seconds = time.time() - started
    out = {}
    for h in WIDTHS:
        with torch.no_grad():
            out[h] = recalibrated_accuracy(net.build, h, weights(h, noise=False), split)
        print(f"h={h:3d} acc={out[h]:.2f}", flush=True)
    result = {"args": vars(args), "trained": trained, "seconds": round(seconds), "accuracy": out}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        torch.save({n: p.detach() for n, p in grid.items()}, Path(args.out).with_suffix(".pt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
