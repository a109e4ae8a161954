"""Expected wall time of `neumeta train --model resnet20` on this machine, from timed steps.

    .venv/bin/python bench/train_time.py [--device auto|cpu|cuda] [--model resnet20|resnet20_stage3]

Times a few pretraining steps (batch 128, BatchNorm) and hypernetwork steps (random width,
functional forward and backward through the hypernetwork) on random CIFAR-shaped data, then
multiplies by the preset's step counts (50,000 training images). No data set is needed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from neumeta_core.config import HyperNetConfig, presets
from neumeta_core.data import Split
from neumeta_core.train import HypernetTrainer, batches, network, pretrain

IMAGES = 50_000


def timed(step: Callable[[], None], n: int, sync: Callable[[], None]) -> float:
    """Seconds per call of `step`, after one untimed call."""
    step()
    sync()
    started = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return (time.perf_counter() - started) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--model", choices=["resnet20", "resnet20_stage3"], default="resnet20")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each kind")
    args = p.parse_args()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    target, _, cfg = presets(args.model)
    n = cfg.batch_size * 2
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    split = Split(x, y, x[:8], y[:8], pad=4, flip=True).to(device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    net = network(target, (3, 32, 32), 10)
    teacher = pretrain(net.build, replace(cfg, pretrain_epochs=1), split, target.max_width, progress=False)
    model = teacher.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = batches(split, cfg.batch_size, gen)

    def pretrain_step() -> None:
        xb, yb = next(data)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    trainer = HypernetTrainer(target, HyperNetConfig(), cfg, net, teacher.state_dict(), device)
    hopt = torch.optim.AdamW(trainer.hypernet.parameters(), lr=1e-4)

    def hyper_step() -> None:
        xb, yb = next(data)
        loss = trainer._loss(xb, yb, trainer._width(1))
        hopt.zero_grad()
        loss.backward()
        hopt.step()

    t_pre = timed(pretrain_step, args.steps, sync)
    t_hyp = timed(hyper_step, args.steps, sync)
    pre_steps = cfg.pretrain_epochs * (IMAGES // cfg.batch_size)
    print(f"device {device}, {args.model} ({len(net.structure.generated)} tensors generated), batch {cfg.batch_size}")
    print("| phase | seconds per step | steps | expected hours |\n|---|---|---|---|")
    print(f"| pretrain (and each individual net) | {t_pre:.3f} | {pre_steps:,} | {pre_steps * t_pre / 3600:.1f} |")
    hyp_steps = cfg.steps + cfg.warm_steps  # warm-start steps are cheaper: an upper bound
    print(f"| hypernetwork | {t_hyp:.3f} | {hyp_steps:,} | {hyp_steps * t_hyp / 3600:.1f} |")


if __name__ == "__main__":
    main()
