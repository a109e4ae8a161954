"""Training: pretrain the full-width target, smooth it, then train the hypernetwork.

Recipe (method notes sections 5 and 10):
1. pretrain the target at h_max on digits;
2. permute every channel group (stem outputs, residual stream, block hidden) along a shortest
   Hamiltonian path, which leaves the function unchanged and smooths it along o and i;
3. warm start: fit the hypernetwork to the teacher resampled to random widths (the step
   that keeps generated networks out of the dead-ReLU collapse seen on digits);
4. task training at a uniformly random width per step: CE + magnitude-weighted reconstruction
   at full width + a Frobenius penalty, coordinate noise of +-0.5, AdamW, value clipping, EMA.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from neumeta_core import permute
from neumeta_core.config import HyperNetConfig, TargetConfig, TrainConfig
from neumeta_core.data import Split, shift
from neumeta_core.hypernet import HyperNetwork
from neumeta_core.sampling import MorphicNet
from neumeta_core.targets import family


@dataclass
class TrainResult:
    morph: MorphicNet
    orders: dict[str, list[int]]  # channel group -> permutation applied to the teacher
    teacher: dict[str, torch.Tensor]  # the permuted teacher's generated tensors at h_max
    teacher_accuracy: float
    accuracy: dict[int, float]  # width -> held-out accuracy (%)
    metadata: dict[str, Any] = field(default_factory=dict)


def batches(split: Split, batch_size: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled, shifted training batches."""
    while True:
        perm = torch.randperm(len(split.y_train), generator=gen)
        for start in range(0, len(perm) - batch_size + 1, batch_size):
            idx = perm[start : start + batch_size]
            yield shift(split.x_train[idx], gen), split.y_train[idx]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = model(x).argmax(dim=1)
    return 100.0 * float((pred == y).float().mean())


def pretrain(
    target: TargetConfig, cfg: TrainConfig, split: Split, progress: bool = True, width: int | None = None
) -> nn.Module:
    """Train the target at `width` (default h_max) with Adam and a cosine schedule; the same
    recipe trains the individually trained baselines."""
    model = family(target.family).build(target, width or target.max_width)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = cfg.pretrain_epochs * (len(split.y_train) // cfg.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.pretrain_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    data = batches(split, cfg.batch_size, gen)
    model.train()
    for _ in tqdm(range(steps), desc="pretrain", disable=not progress, mininterval=1.0):
        x, y = next(data)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def resample(
    teacher: dict[str, torch.Tensor], axes: dict[str, int], width: int, max_width: int
) -> dict[str, torch.Tensor]:
    """The teacher's generated tensors at `width`: the nearest channel along the (permuted)
    hidden axis, o -> round(o * h_max / h); inputs rescaled by h_max / h to keep fan-in sums."""
    idx = torch.clamp(torch.round(torch.arange(width) * max_width / width).long(), max=max_width - 1)
    out = {}
    for name, tensor in teacher.items():
        axis = axes.get(name)
        if axis is None:
            out[name] = tensor
        else:
            out[name] = tensor.index_select(axis, idx) * (max_width / width if axis == 1 else 1.0)
    return out


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, times T^2 (Hinton et al.)."""
    t = temperature
    log_p = nn.functional.log_softmax(student / t, dim=1)
    log_q = nn.functional.log_softmax(teacher / t, dim=1)
    return nn.functional.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * t * t


def _relative_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean() / (target**2).mean().clamp_min(1e-12)


def _weighted_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reconstruction weighted by |W| / max |W| (the released weighted_regression_loss)."""
    w = (target.abs() + 1e-6) / (target.abs() + 1e-6).max()
    return (w * (pred - target) ** 2).mean()


class HypernetTrainer:
    def __init__(self, target: TargetConfig, hyper: HyperNetConfig, cfg: TrainConfig, teacher: nn.Module) -> None:
        self.target, self.cfg = target, cfg
        self.family = family(target.family)
        self.axes = self.family.hidden_group(target)
        state = {k: v.detach() for k, v in teacher.state_dict().items()}
        names = list(self.family.generated_shapes(target, target.max_width))
        self.teacher = {n: state[n] for n in names}
        self.fixed = {k: v for k, v in state.items() if k not in self.teacher}
        self.hypernet = HyperNetwork(hyper, len(names), target.max_width)
        self.models = {h: self.family.build(target, h) for h in self.widths}
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)

    @property
    def widths(self) -> range:
        return range(self.target.train_min_width, self.target.max_width + 1)

    def _generate(self, width: int) -> dict[str, torch.Tensor]:
        shapes = self.family.generated_shapes(self.target, width)
        tensors = self.hypernet(list(shapes.values()), 1, self.cfg.coord_noise, self.gen)
        return dict(zip(shapes, tensors, strict=True))

    def warm_start(self, progress: bool) -> float:
        opt = torch.optim.AdamW(self.hypernet.parameters(), lr=self.cfg.warm_lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(self.cfg.warm_steps, 1))
        loss = torch.zeros(())
        bar = tqdm(range(self.cfg.warm_steps), desc="warm start", disable=not progress, mininterval=1.0)
        for _ in bar:
            width = self.rng.choice(self.widths)
            goal = resample(self.teacher, self.axes, width, self.target.max_width)
            pred = self._generate(width)
            loss = sum((_relative_mse(pred[n], goal[n]) for n in pred), torch.zeros(())) / len(pred)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(rel_mse=f"{loss.item():.4f}", refresh=False)
        return loss.item()

    def _width(self, micro: int) -> int:
        """Uniform over the trained widths; with accumulation, the window's first batch is h_max."""
        if self.cfg.accumulation > 1 and micro == 0:
            return self.target.max_width
        return self.rng.choice(self.widths)

    def _loss(self, x: torch.Tensor, y: torch.Tensor, width: int) -> torch.Tensor:
        """CE + Frobenius penalty, + reconstruction at h_max, + optional distillation from the teacher."""
        cfg = self.cfg
        weights = self._generate(width)
        logits = functional_call(self.models[width], {**self.fixed, **weights}, (x,))
        loss = nn.functional.cross_entropy(logits, y)
        loss = loss + cfg.norm_weight * sum((w.norm() for w in weights.values()), torch.zeros(()))
        if width == self.target.max_width:
            recon = sum((_weighted_mse(weights[n], self.teacher[n]) for n in weights), torch.zeros(()))
            loss = loss + cfg.recon_weight * recon / len(weights)
        if cfg.kd_weight > 0:
            with torch.no_grad():
                full = self.models[self.target.max_width]
                target_logits = functional_call(full, {**self.fixed, **self.teacher}, (x,))
            loss = loss + cfg.kd_weight * distillation(logits, target_logits, cfg.kd_temperature)
        return loss

    def task(self, split: Split, progress: bool) -> AveragedModel:
        cfg = self.cfg
        ema = AveragedModel(self.hypernet, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
        opt = torch.optim.AdamW(self.hypernet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
        data = batches(split, cfg.batch_size, self.gen)
        bar = tqdm(range(cfg.steps), desc="hypernet", disable=not progress, mininterval=1.0)
        for _ in bar:
            opt.zero_grad()
            for micro in range(cfg.accumulation):
                x, y = next(data)
                width = self._width(micro)
                loss = self._loss(x, y, width) / cfg.accumulation
                loss.backward()
            nn.utils.clip_grad_value_(self.hypernet.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            ema.update_parameters(self.hypernet)
            bar.set_postfix(loss=f"{loss.item():.3f}", h=width, refresh=False)
        return ema


def train(
    target: TargetConfig, hyper: HyperNetConfig, cfg: TrainConfig, split: Split, progress: bool = True
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    started = time.time()
    teacher = pretrain(target, cfg, split, progress)
    teacher_acc = accuracy(teacher, split.x_test, split.y_test)
    fam = family(target.family)
    groups = fam.channel_groups(target)
    if cfg.permute == "hidden":
        groups = {"block.hidden": fam.hidden_group(target)}
    smoothing = permute.smooth(teacher.state_dict(), groups if cfg.permute != "none" else {})
    teacher.load_state_dict(smoothing.state)
    trainer = HypernetTrainer(target, hyper, cfg, teacher)
    warm_loss = trainer.warm_start(progress)
    ema = trainer.task(split, progress)
    hypernet: HyperNetwork = ema.module  # type: ignore[assignment]
    morph = MorphicNet(target, hypernet, trainer.fixed, cfg.samples, cfg.coord_noise, cfg.seed)
    table = {h: accuracy(morph.synthesize(h), split.x_test, split.y_test) for h in evaluation_widths(target)}
    meta = {
        "teacher_accuracy": teacher_acc,
        "total_variation": {g: {"before": b, "after": a} for g, (b, a) in smoothing.total_variation.items()},
        "warm_start_rel_mse": warm_loss,
        "train_seconds": round(time.time() - started, 1),
        "torch": str(torch.__version__),
    }
    return TrainResult(morph, smoothing.orders, trainer.teacher, teacher_acc, table, meta)


def evaluation_widths(target: TargetConfig) -> list[int]:
    """gamma = 0, 0.25, 0.5, 0.75 plus the smallest served width."""
    h = target.max_width
    return sorted({h, round(0.75 * h), round(0.5 * h), round(0.25 * h), target.min_width}, reverse=True)
