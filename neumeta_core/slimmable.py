"""The alternative a user would otherwise pick: a universally slimmable network (US-Nets, Yu & Huang, ICCV 2019),
implemented from the paper's description for any `build(width)`.

One full-width network; the network at width w is its first channels along every axis that follows the width
(the shape rules say which and how many). Training uses the sandwich rule (every step the largest width, the
smallest and two drawn uniformly between), in-place distillation (the largest width learns from the labels, the
others from its detached soft predictions) and, after training, BatchNorm statistics recalibrated per width on
training images. The optimiser, schedule and epochs are the teacher's (TrainConfig's pretrain fields).

Training-side: imports the builder."""

from __future__ import annotations

import random

import torch
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from neumeta_core.config import TrainConfig
from neumeta_core.data import Split
from neumeta_core.network import Rule
from neumeta_core.structure import Builder, build_at, rules
from neumeta_core.train import accuracy, batches, optimiser, recalibrate

RECALIBRATION_IMAGES = 2048  # US-Nets: 2,000 training images are enough for stable statistics


def sliced(state: dict[str, torch.Tensor], shape_rules: dict[str, Rule], width: int) -> dict[str, torch.Tensor]:
    """The first channels of every tensor along each axis that follows the width: views, so gradients reach the
    full-width tensors."""
    out = {}
    for name, tensor in state.items():
        shape = shape_rules[name].at(width)
        for axis in shape_rules[name].axes:
            tensor = tensor.narrow(axis, 0, shape[axis])
        out[name] = tensor
    return out


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the soft predictions `target` (probabilities): in-place distillation's loss."""
    return -(target * nn.functional.log_softmax(logits, dim=1)).sum(dim=1).mean()


def shape_rules(build: Builder, low: int, high: int) -> dict[str, Rule]:
    """The builder's shape rules from three widths of the range (two where it has only two)."""
    mid = (low + high) // 2
    probe = (high, low, mid) if low < mid < high else (high, low, high + 1)
    return rules(build, probe)


def train(
    build: Builder, cfg: TrainConfig, split: Split, low: int, high: int, progress: bool = True
) -> dict[str, torch.Tensor]:
    """The full-width state dict of a universally slimmable build(width), trained on widths low..high."""
    device = split.y_train.device
    torch.manual_seed(cfg.seed)
    full = build_at(build, high).to(device).train()
    shape = shape_rules(build, low, high)
    subnets = {w: build_at(build, w).to(device).train() for w in range(low, high)}
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    steps = cfg.pretrain_epochs * max(len(split.y_train) // cfg.batch_size, 1)
    opt = optimiser(cfg, full.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    data = batches(split, cfg.batch_size, gen)
    bar = tqdm(range(steps), desc=f"slimmable {low}..{high}", disable=not progress, mininterval=1.0)
    for _ in bar:
        x, y = next(data)
        opt.zero_grad()
        logits = full(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        soft = nn.functional.softmax(logits.detach(), dim=1)
        others = [low, rng.randint(low, high), rng.randint(low, high)] if low < high else []
        for width in others:
            params = sliced(dict(full.named_parameters()), shape, width)
            model = full if width == high else subnets[width]
            soft_cross_entropy(functional_call(model, params, (x,)), soft).backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return {k: v.detach().clone() for k, v in full.state_dict().items()}


def at_width(
    build: Builder, state: dict[str, torch.Tensor], low: int, high: int, width: int, split: Split
) -> nn.Module:
    """The slimmable network at `width` (any width up to `high`, below `low` too), its BatchNorm statistics
    recalibrated on the first RECALIBRATION_IMAGES training images; in eval mode."""
    shape = shape_rules(build, low, high)
    model = build_at(build, width).to(split.y_train.device)
    model.load_state_dict({k: v.clone() for k, v in sliced(state, shape, width).items()})
    return recalibrate(model, split.x_train[:RECALIBRATION_IMAGES])


def evaluate(
    build: Builder, state: dict[str, torch.Tensor], low: int, high: int, widths: list[int], split: Split
) -> dict[int, float]:
    """Held-out accuracy (%) at each width."""
    return {w: accuracy(at_width(build, state, low, high, w, split), split.x_test, split.y_test) for w in widths}
