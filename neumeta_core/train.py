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

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.func import functional_call
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from neumeta_core import permute
from neumeta_core.config import HyperNetConfig, TargetConfig, TrainConfig
from neumeta_core.data import Split
from neumeta_core.distributed import SINGLE, World
from neumeta_core.export import Graph
from neumeta_core.hypernet import HyperNetwork, ResidualMLP
from neumeta_core.network import Shape, Structure, probe
from neumeta_core.progress import Progress, shown
from neumeta_core.resume import Batches, Resumable, rng_state, set_rng_state
from neumeta_core.sampling import MorphicNet
from neumeta_core.structure import Builder, build_at, derive, load_builder

if TYPE_CHECKING:
    from neumeta_core.checkpoint import Checkpoint

CALIBRATION_BYTES = 3 << 20  # training images kept in a checkpoint whose network has BatchNorm: at most 512, 3 MB
PROBE_IMAGES = 512  # held-out images the progress reports score the probe width on


def reporter(progress: Progress | bool, world: World) -> Progress:
    """Where this process reports: nowhere but on the main rank (the others keep its pace: the loss reported is
    averaged over the ranks at the same steps)."""
    progress = shown(progress)
    return progress if world.main else Progress(show=False, every=progress.every)


@dataclass(frozen=True)
class Network:
    """A user's `build(width)`, what was derived from it, and its graph at every stored width."""

    build: Builder
    structure: Structure
    graphs: dict[int, Graph]
    unpermuted: list[str]  # channel groups whose permutation would change the function


def network(target: TargetConfig, input_shape: Shape, classes: int) -> Network:
    """Load and derive the target's network: InputError (one line) for one the service cannot serve."""
    build = load_builder(target.model)
    structure, graphs, dropped = derive(
        build, target.model, target.max_width, target.stored_widths(), input_shape, classes, target.generate
    )
    return Network(build, structure, graphs, dropped)


@dataclass
class TrainResult:
    morph: MorphicNet
    orders: dict[str, list[int]]  # channel group -> permutation applied to the teacher
    teacher: dict[str, torch.Tensor]  # the permuted teacher's generated (and later trained) tensors at h_max
    teacher_accuracy: float
    accuracy: dict[int, float]  # width -> held-out accuracy (%)
    reference: dict[int, dict[int, torch.Tensor]]  # K -> width -> logits of build(width) on probe(), served weights
    calibration: torch.Tensor | None
    labels: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""  # what the data set is called (Split.name): digits, cifar10, an idx directory's name


def batches(split: Split, batch_size: int, gen: torch.Generator, world: World = SINGLE) -> Batches:
    """Endless shuffled, augmented training batches (this rank's shard of each), their position resumable
    (neumeta_core.resume)."""
    return Batches(split, batch_size, gen, world)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = sum(
        int((model(x[i : i + chunk].to(device)).argmax(dim=1).cpu() == y[i : i + chunk]).sum())
        for i in range(0, len(y), chunk)
    )
    return 100.0 * correct / len(y)


@torch.no_grad()
def recalibrated_accuracy(
    build: Builder, width: int, tensors: dict[str, torch.Tensor], split: Split, images: int = 2048
) -> float:
    """Held-out accuracy (%) of build(width) with `tensors` (those of its names and shapes) over its own initial
    state, every BatchNorm recalibrated on the first `images` training images (the probes' evaluation)."""
    model = build_at(build, width).to(split.y_train.device)
    state = model.state_dict()
    state.update({k: v for k, v in tensors.items() if k in state and v.shape == state[k].shape})
    model.load_state_dict(state)
    return accuracy(recalibrate(model, split.x_train[:images]), split.x_test, split.y_test)


def optimiser(cfg: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The teacher's optimiser: Adam, or SGD with Nesterov momentum 0.9; the same for every baseline."""
    if cfg.pretrain_optimizer == "sgd":
        return torch.optim.SGD(
            params, cfg.pretrain_lr, momentum=0.9, nesterov=True, weight_decay=cfg.pretrain_weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.pretrain_lr, weight_decay=cfg.pretrain_weight_decay)


def pretrain(
    build: Builder,
    cfg: TrainConfig,
    split: Split,
    width: int,
    progress: Progress | bool = True,
    resume: Resumable | None = None,
    world: World = SINGLE,
) -> nn.Module:
    """Train build(width) with a cosine schedule (in eval mode on return); the same recipe trains the
    individually trained baselines. Runs where `split` lies. `resume`: the run's training state (the teacher's
    phase, "pretrain"); `world`: the ranks that share each batch (neumeta_core.distributed)."""
    device = split.y_train.device
    model = build_at(build, width).to(device)
    start, saved = resume.start("pretrain") if resume else (0, None)
    if start < 0 and resume is not None:  # the saved run had trained the teacher: it is in the state
        model.load_state_dict(resume.done["teacher"])
        return model.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = cfg.pretrain_epochs * max(len(split.y_train) // cfg.batch_size, 1)
    opt = optimiser(cfg, model.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    data = batches(split, cfg.batch_size, gen, world)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        data.load_state_dict(saved["data"])
    model.train()
    engine = world.wrap(model)

    def state() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "data": data.state_dict(),
        }

    def probe() -> float:
        score = accuracy(model, split.x_test[:PROBE_IMAGES], split.y_test[:PROBE_IMAGES])
        model.train()
        return score

    bar = reporter(progress, world).phase(f"pretrain h={width}", start, steps, world, width)
    for step in range(start, steps):
        x, y = next(data)
        loss = nn.functional.cross_entropy(engine(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.step(step + 1, loss, width, probe)
        if resume is not None:
            resume.step("pretrain", step + 1, steps, state)
    bar.close()
    if resume is not None:
        resume.done["teacher"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return model.eval()


def resample(
    teacher: dict[str, torch.Tensor], axes: dict[str, tuple[int, ...]], shapes: dict[str, Shape]
) -> dict[str, torch.Tensor]:
    """The teacher's generated tensors at the sizes `shapes`: along each (permuted) width axis the
    nearest channel, o -> round(o * N / n) for N teacher channels and n wanted; input axes (1)
    rescaled by N / n to keep fan-in sums (a weight whose axis 1 is its fan-in)."""
    out = {}
    for name, tensor in teacher.items():
        for axis in axes.get(name, ()):
            n, big = shapes[name][axis], tensor.shape[axis]
            idx = torch.clamp(torch.round(torch.arange(n) * big / n).long(), max=big - 1)
            tensor = tensor.index_select(axis, idx.to(tensor.device)) * (big / n if axis == 1 else 1.0)
        out[name] = tensor
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


class Generating(nn.Module):
    """What the hypernetwork phases train, as one module (the unit DDP averages gradients over): the hypernetwork
    and the shared tensors; forward makes the generated tensors at `shapes` with one noisy coordinate set."""

    def __init__(self, hypernet: HyperNetwork, shared: nn.ParameterDict) -> None:
        super().__init__()
        self.hypernet, self.shared = hypernet, shared

    def forward(self, shapes: list[Shape], noise: float, generator: torch.Generator) -> list[torch.Tensor]:
        return self.hypernet(shapes, 1, noise, generator)


class HypernetTrainer:
    """Fits one hypernetwork to a smoothed teacher: the generated tensors at random widths, the rest fixed
    (or, with `fixed_lr`, trained too and shared by every width)."""

    def __init__(
        self,
        target: TargetConfig,
        hyper: HyperNetConfig,
        cfg: TrainConfig,
        net: Network,
        teacher: dict[str, torch.Tensor],
        device: str | torch.device = "cpu",
        world: World = SINGLE,
    ) -> None:
        self.target, self.cfg, self.device, self.world = target, cfg, torch.device(device), world
        self.net, self.structure = net, net.structure
        teacher = {k: v.to(self.device) for k, v in teacher.items()}
        self.axes = self.structure.axes()
        self.names = list(self.structure.generated)
        self.teacher = {n: teacher[n] for n in self.names}
        self.teacher_model = build_at(net.build, target.max_width).to(self.device).eval()
        self.teacher_model.load_state_dict(teacher)
        statistics = set(self.structure.statistics)  # BatchNorm statistics: measured at each width
        params = {n for n, _ in self.teacher_model.named_parameters()}
        rest = {k: v for k, v in teacher.items() if k not in self.teacher and k not in statistics}
        trained = {k for k in rest if k in params and cfg.fixed_lr > 0}
        self.shared = nn.ParameterDict({k.replace(".", "/"): nn.Parameter(rest[k].clone()) for k in trained})
        self.fixed = {k: v for k, v in rest.items() if k not in trained}
        full = list(self.structure.shapes(target.max_width).values())
        self.hypernet = HyperNetwork(hyper, len(self.names), target.max_width, full).to(self.device)
        if hyper.grid:  # the grid starts as the smoothed teacher, the MLPs' correction at zero
            with torch.no_grad():
                for grid, name in zip(self.hypernet.grids, self.names, strict=True):
                    grid.copy_(self.teacher[name])
                for module in self.hypernet.mlps:
                    nn.init.zeros_(cast(ResidualMLP, module).out.weight)
                    nn.init.zeros_(cast(ResidualMLP, module).out.bias)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)
        self.done = 0.0  # the fraction of the task phase done: what the coordinate noise's schedule follows
        self.models = {h: build_at(net.build, h).to(self.device) for h in self.widths}
        # what the task phases differentiate, through DDP where there are several ranks (`engage`)
        self.engine: nn.Module = Generating(self.hypernet, self.shared)
        # what _state hands each model: its parameters (BatchNorm uses batch statistics in training)
        self.keys = {h: [name for name, _ in m.named_parameters()] for h, m in self.models.items()}

    @property
    def widths(self) -> list[int]:
        return self.target.trained_widths()

    def _generate(self, width: int, noise: bool = True) -> dict[str, torch.Tensor]:
        shapes = list(self.structure.shapes(width).values())
        tensors = self.engine(shapes, self.noise(width) if noise else 0.0, self.gen)
        return dict(zip(self.names, tensors, strict=True))

    def engage(self) -> None:
        """The task phases' engine: wrapped for data parallelism (the ranks' hypernetworks, equal after the warm
        start, are made identical by DDP's broadcast from rank 0)."""
        self.engine = self.world.wrap(Generating(self.hypernet, self.shared))

    @property
    def probe_width(self) -> int:
        """Where probe() measures: the smallest trained width."""
        return min(self.widths)

    @torch.no_grad()
    def probe(self, split: Split) -> float:
        """Held-out accuracy (%) at probe_width, clean coordinates, BatchNorm with the statistics its training
        batches left: what the progress reports show (no random draws, nothing changed)."""
        width = self.probe_width
        shapes = list(self.structure.shapes(width).values())
        weights = dict(zip(self.names, self.hypernet(shapes), strict=True))
        model = self.models[width].eval()
        logits = functional_call(model, self._state(weights, width), (split.x_test[:PROBE_IMAGES],))
        model.train()
        return 100.0 * float((logits.argmax(dim=1) == split.y_test[:PROBE_IMAGES]).float().mean())

    def noise(self, width: int) -> float:
        """Coordinate noise at `width`, in channel-index units: constant, or with `noise_inverse` the
        configured width at the smallest trained width, shrinking as 1/h above it (the same absolute
        jitter in normalised position, so wide networks keep their fine detail). With `noise_end` < 1 it falls
        from coord_noise to coord_noise * noise_end over the task phase (`self.done`: its fraction done), except at
        the smallest trained width with `full_noise_smallest`."""
        scale = min(self.widths) / width if self.cfg.noise_inverse else 1.0
        end = 1.0 if self.cfg.full_noise_smallest and width == min(self.widths) else self.cfg.noise_end
        anneal = end + (1.0 - end) * (1.0 + math.cos(math.pi * self.done)) / 2.0
        return self.cfg.coord_noise * scale * anneal

    def _state(self, weights: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
        """Every tensor the stage's model at `width` needs: generated, teacher, shared, fixed."""
        shared = {k.replace("/", "."): v for k, v in self.shared.items()}
        state = {**self.fixed, **self.teacher, **shared, **weights}
        return {k: state[k] for k in self.keys[width]}

    def _saved(self, phase: str, resume: Resumable | None) -> tuple[int, dict[str, Any] | None]:
        """Where `phase` starts (resume.start), with the trainer's own state restored when resuming in it."""
        start, saved = resume.start(phase) if resume else (0, None)
        if saved is not None:
            self.hypernet.load_state_dict(saved["hypernet"])
            for name, value in saved["shared"].items():
                self.shared[name].data.copy_(value)
            self.gen.set_state(saved["gen"])
            set_rng_state(self.rng, saved["rng"])
        return start, saved

    def _own(self) -> dict[str, Any]:
        return {
            "hypernet": self.hypernet.state_dict(),
            "shared": {k: v.detach() for k, v in self.shared.items()},
            "gen": self.gen.get_state(),
            "rng": rng_state(self.rng),
        }

    def warm_start(self, progress: Progress | bool, resume: Resumable | None = None) -> float:
        """Fit the hypernetwork to the teacher resampled to random widths. No data: every rank does the same."""
        start, saved = self._saved("warm", resume)
        if start < 0 and resume is not None:
            return float(resume.done["warm_loss"])
        opt = torch.optim.AdamW(self.hypernet.parameters(), lr=self.cfg.warm_lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(self.cfg.warm_steps, 1))
        if saved is not None:
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])

        def state() -> dict[str, Any]:
            return {**self._own(), "opt": opt.state_dict(), "sched": sched.state_dict()}

        loss = torch.zeros(())
        bar = reporter(progress, self.world).phase("warm start", start, self.cfg.warm_steps, self.world)
        for step in range(start, self.cfg.warm_steps):
            width = self.rng.choice(self.widths)
            goal = resample(self.teacher, self.axes, self.structure.shapes(width))
            pred = self._generate(width)
            loss = sum((_relative_mse(pred[n], goal[n]) for n in pred), torch.zeros(())) / len(pred)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.step(step + 1, loss, width)
            if resume is not None:
                resume.step("warm", step + 1, self.cfg.warm_steps, state)
        bar.close()
        if resume is not None:
            resume.done["warm_loss"] = loss.item()
        return loss.item()

    def _width(self, micro: int) -> int:
        """Uniform over the trained widths; with accumulation, the window's first batch is h_max, or
        with `sandwich` the smallest trained width (and the second h_max, with three or more)."""
        cfg = self.cfg
        if cfg.sandwich and micro < 2 and micro < cfg.accumulation - 1:
            return (min(self.widths), self.target.max_width)[micro]
        if cfg.accumulation > 1 and micro == 0:
            return self.target.max_width
        return self.rng.choice(self.widths)

    def _loss(self, x: torch.Tensor, y: torch.Tensor, width: int) -> torch.Tensor:
        """CE + Frobenius penalty, + reconstruction at h_max, + optional distillation from the teacher."""
        cfg = self.cfg
        weights = self._generate(width)
        logits = functional_call(self.models[width], self._state(weights, width), (x,))
        loss = nn.functional.cross_entropy(logits, y)
        loss = loss + cfg.norm_weight * sum((w.norm() for w in weights.values()), torch.zeros(()))
        if width == self.target.max_width:
            recon = sum((_weighted_mse(weights[n], self.teacher[n]) for n in weights), torch.zeros(()))
            loss = loss + cfg.recon_weight * recon / len(weights)
        if cfg.kd_weight > 0:
            with torch.no_grad():
                target_logits = self.teacher_model(x)
            loss = loss + cfg.kd_weight * distillation(logits, target_logits, cfg.kd_temperature)
        return loss

    def _phase_state(
        self, opt: torch.optim.Optimizer, sched: Any, ema: AveragedModel, data: Batches
    ) -> Callable[[], dict[str, Any]]:
        def state() -> dict[str, Any]:
            return {
                **self._own(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "ema": ema.state_dict(),
                "data": data.state_dict(),
            }

        return state

    @staticmethod
    def _restore(
        saved: dict[str, Any] | None, opt: torch.optim.Optimizer, sched: Any, ema: AveragedModel, data: Batches
    ) -> None:
        if saved is not None:
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
            ema.load_state_dict(saved["ema"])
            data.load_state_dict(saved["data"])

    def task(self, split: Split, progress: Progress | bool, resume: Resumable | None = None) -> AveragedModel:
        cfg = self.cfg
        start, saved = self._saved("task", resume)
        self.engage()
        ema = AveragedModel(self.hypernet, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
        groups: list[dict[str, Any]] = [
            {"params": list(self.hypernet.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay}
        ]
        if len(self.shared):
            groups.append({"params": list(self.shared.values()), "lr": cfg.fixed_lr, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
        data = batches(split, cfg.batch_size, self.gen, self.world)
        self._restore(saved, opt, sched, ema, data)
        state = self._phase_state(opt, sched, ema, data)
        bar = reporter(progress, self.world).phase("hypernet", start, cfg.steps, self.world, self.probe_width)
        for step in range(start, cfg.steps):
            self.done = step / max(cfg.steps, 1)
            opt.zero_grad()
            for micro in range(cfg.accumulation):
                x, y = next(data)
                width = self._width(micro)
                with self.world.accumulating(self.engine, last=micro == cfg.accumulation - 1):
                    loss = self._loss(x, y, width) / cfg.accumulation
                    loss.backward()
            nn.utils.clip_grad_value_(self.hypernet.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            ema.update_parameters(self.hypernet)
            bar.step(step + 1, loss * cfg.accumulation, width, lambda: self.probe(split))
            if resume is not None:
                resume.step("task", step + 1, cfg.steps, state)
        bar.close()
        return ema

    def slim(self, split: Split, progress: Progress | bool, resume: Resumable | None = None) -> AveragedModel:
        """The universally slimmable recipe for `slim_epochs` epochs: every batch at h_max (cross-entropy), at the
        smallest trained width and at two random trained widths (cross-entropy against h_max's detached
        predictions: in-place distillation), one optimiser step for the four; AdamW, cosine schedule, EMA. The
        grids are not decayed."""
        cfg, high = self.cfg, self.target.max_width
        start, saved = self._saved("task", resume)
        self.engage()
        grids = set(map(id, self.hypernet.grids.parameters()))
        rest = [p for p in self.hypernet.parameters() if id(p) not in grids]
        opt = torch.optim.AdamW(
            [
                {"params": list(self.hypernet.grids.parameters()), "weight_decay": 0.0},
                {"params": rest, "weight_decay": cfg.weight_decay},
            ],
            lr=cfg.lr,
        )
        steps = max(1, round(cfg.slim_epochs * max(len(split.y_train) // cfg.batch_size, 1)))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        ema = AveragedModel(self.hypernet, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
        data = batches(split, cfg.batch_size, self.gen, self.world)
        self._restore(saved, opt, sched, ema, data)
        state = self._phase_state(opt, sched, ema, data)
        bar = reporter(progress, self.world).phase("hypernet (sandwich)", start, steps, self.world, self.probe_width)
        for step in range(start, steps):
            self.done = step / steps
            x, y = next(data)
            opt.zero_grad()
            with self.world.accumulating(self.engine, last=False):
                logits = functional_call(self.models[high], self._state(self._generate(high), high), (x,))
                loss = nn.functional.cross_entropy(logits, y)
                loss.backward()
            soft = nn.functional.softmax(logits.detach(), dim=1)
            others = (min(self.widths), self.rng.choice(self.widths), self.rng.choice(self.widths))
            for n, width in enumerate(others):
                with self.world.accumulating(self.engine, last=n == len(others) - 1):
                    out = functional_call(self.models[width], self._state(self._generate(width), width), (x,))
                    (-(soft * nn.functional.log_softmax(out, dim=1)).sum(dim=1).mean()).backward()
            nn.utils.clip_grad_value_(self.hypernet.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            ema.update_parameters(self.hypernet)
            bar.step(step + 1, loss, high, lambda: self.probe(split))  # the loss at h_max; the probe at the smallest
            if resume is not None:
                resume.step("task", step + 1, steps, state)
        bar.close()
        return ema

    def final_fixed(self) -> dict[str, torch.Tensor]:
        """The non-generated tensors every synthesised network gets, trained ones included."""
        shared = {k.replace("/", "."): v.detach().clone() for k, v in self.shared.items()}
        return {**self.fixed, **shared}


@dataclass
class Fitted:
    """What the training phases leave: the trainer (its hypernetwork at the EMA's weights), the smoothing of the
    teacher, and what the evaluation reports of them."""

    net: Network
    trainer: HypernetTrainer
    smoothing: permute.Smoothing
    teacher_accuracy: float
    warm_loss: float
    started: float


def fit(
    target: TargetConfig,
    hyper: HyperNetConfig,
    cfg: TrainConfig,
    split: Split,
    net: Network | None = None,
    progress: Progress | bool = True,
    device: str | torch.device = "cpu",
    teacher: nn.Module | None = None,
    resume: Resumable | None = None,
    world: World = SINGLE,
) -> Fitted:
    """The recipe's training phases on `device` (a CUDA GPU where there is one), on every rank of `world`.
    `teacher`: build(h_max) already pretrained with this recipe and seed (neumeta_core.baselines.teacher caches
    it)."""
    net = net or network(target, split.input_shape, split.classes)
    torch.manual_seed(cfg.seed)
    started = time.time()
    split = split.to(device)
    if teacher is None:
        teacher = pretrain(net.build, cfg, split, target.max_width, progress, resume, world)
    teacher = teacher.to(device).eval()
    teacher_acc = accuracy(teacher, split.x_test, split.y_test)
    torch.manual_seed(cfg.seed + 1)  # the hypernetwork's initial weights: the same, cached teacher or not
    groups = {"all": net.structure.groups, "hidden": net.structure.hidden_groups(), "none": {}}[cfg.permute]
    smoothing = permute.smooth(dict(teacher.state_dict()), groups)
    trainer = HypernetTrainer(target, hyper, cfg, net, smoothing.state, device, world)
    warm_loss = trainer.warm_start(progress, resume)
    ema = trainer.slim(split, progress, resume) if cfg.slim_epochs > 0 else trainer.task(split, progress, resume)
    trainer.hypernet.load_state_dict(ema.module.state_dict())
    return Fitted(net, trainer, smoothing, teacher_acc, warm_loss, started)


def evaluate(fitted: Fitted, split: Split, progress: Progress | bool = True) -> TrainResult:
    """The trained hypernetwork as a checkpoint's contents: the BatchNorm statistics and reference logits of every
    stored width, the accuracy table, the metadata (one process: rank 0 of a data-parallel run)."""
    net, trainer, smoothing = fitted.net, fitted.trainer, fitted.smoothing
    target, cfg = trainer.target, trainer.cfg
    split = split.to(trainer.device)
    calibration = None
    if net.structure.statistics:
        count = min(512, len(split.y_train), max(64, CALIBRATION_BYTES // (4 * math.prod(split.input_shape))))
        calibration = split.x_train[:count].clone()
    morph = MorphicNet(
        target,
        net.structure,
        trainer.hypernet,
        trainer.final_fixed(),
        {},
        net.graphs,
        cfg.samples,
        cfg.final_noise,
        cfg.seed,
        lattice=cfg.quadrature == "lattice",
    )
    images = calibration  # the statistics' images: the kept ones, or the first statistics_images of the training set
    if calibration is not None and cfg.statistics_images:
        images = split.x_train[: cfg.statistics_images]
    reference = measure(morph, net.build, images, shown(progress).show)
    table = {
        h: accuracy(synthesize(morph, net.build, h), split.x_test, split.y_test) for h in evaluation_widths(target)
    }
    meta = {
        "teacher_accuracy": fitted.teacher_accuracy,
        "total_variation": {g: {"before": b, "after": a} for g, (b, a) in smoothing.total_variation.items()},
        "unpermuted_groups": net.unpermuted,
        "warm_start_rel_mse": fitted.warm_loss,
        "train_seconds": round(time.time() - fitted.started, 1),
        "torch": str(torch.__version__),
    }
    shared_before = {
        k: v for k, v in smoothing.state.items() if k in morph.fixed or k.replace(".", "/") in trainer.shared
    }
    stats = {k: v for k, v in smoothing.state.items() if k in net.structure.statistics}
    teacher_tensors = {**trainer.teacher, **shared_before, **stats}  # what L1 pruning starts from
    return TrainResult(
        morph,
        smoothing.orders,
        teacher_tensors,
        fitted.teacher_accuracy,
        table,
        reference,
        calibration,
        list(split.labels),
        meta,
        split.name,
    )


def train(
    target: TargetConfig,
    hyper: HyperNetConfig,
    cfg: TrainConfig,
    split: Split,
    net: Network | None = None,
    progress: Progress | bool = True,
    device: str | torch.device = "cpu",
    teacher: nn.Module | None = None,
    resume: Resumable | None = None,
) -> TrainResult:
    """The whole recipe in one process: fit, then evaluate; the result's tensors stay on `device`."""
    return evaluate(fit(target, hyper, cfg, split, net, progress, device, teacher, resume), split, progress)


@torch.no_grad()
def recalibrate(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Slimmable networks' BN calibration: every BatchNorm's running statistics set to those of
    `images` in one batch (exact and deterministic); the model is returned in eval mode."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one batch gives its exact statistics
    model.train()(images)
    return model.eval()


def synthesize(morph: MorphicNet, build: Builder, width: int) -> nn.Module:
    """build(width) with the served weights, on the hypernetwork's device, in eval mode."""
    model = build_at(build, width).to(morph.device)
    model.load_state_dict(morph.state_dict(width))
    return model.eval()


@torch.no_grad()
def measure(
    morph: MorphicNet, build: Builder, calibration: torch.Tensor | None, progress: bool = False
) -> dict[int, dict[int, torch.Tensor]]:
    """At every stored width, for K = 1 and the checkpoint's K: the BatchNorm statistics of the calibration
    images (into morph.statistics), and the logits of build(width) on probe() (returned: the service's
    reference for its files)."""
    reference: dict[int, dict[int, torch.Tensor]] = {}
    x = probe(morph.structure.input_shape).to(morph.device)
    widths = morph.target.stored_widths()
    plan = [(k, w) for k in sorted({1, morph.samples}) for w in widths]
    with morph.allowing(min(widths)):
        for k, width in tqdm(plan, desc="statistics", disable=not progress, mininterval=1.0):
            model = build_at(build, width).to(morph.device)
            generated = morph.generate(width, samples=k)
            model.load_state_dict({**morph.fixed, **generated}, strict=False)  # the statistics are measured here
            if calibration is not None:
                recalibrate(model, calibration.to(morph.device))
                state = model.state_dict()
                stats = {n: state[n].detach().clone() for n in morph.structure.statistics}
                morph.statistics.setdefault(k, {})[width] = stats
            reference.setdefault(k, {})[width] = model.eval()(x).cpu()
    return reference


def evaluation_widths(target: TargetConfig) -> list[int]:
    """gamma = 0, 0.25, 0.5, 0.75 plus the smallest served width (those of them that are served)."""
    h = target.max_width
    widths = {h, round(0.75 * h), round(0.5 * h), round(0.25 * h), target.min_width}
    return sorted((w for w in widths if w >= target.min_width), reverse=True)


def model_at(ckpt: Checkpoint, width: int) -> nn.Module:
    """The checkpoint's network at `width` as a torch module: its builder (imported: training side only)
    with the served weights."""
    with ckpt.morph.allowing(min(width, ckpt.target.min_width)):
        return synthesize(ckpt.morph, load_builder(ckpt.target.model), width)
