"""From a ratio to a width, and from a width to a network with generated weights."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from neumeta_core.config import TargetConfig
from neumeta_core.errors import InputError
from neumeta_core.hypernet import HyperNetwork
from neumeta_core.targets import Shape, family


def width_for(ratio: float, max_width: int) -> int:
    """h = round((1 - gamma) * h_max), halves rounded up; gamma is the paper's compression ratio."""
    return math.floor((1.0 - ratio) * max_width + 0.5)


def ratio_for(width: int, max_width: int) -> float:
    """The ratio actually served once the width is an integer."""
    return 1.0 - width / max_width


def unseen_widths(target: TargetConfig) -> list[int]:
    """Widths training never drew, for evaluation: two between trained ones (where the stride
    leaves gaps), the middle of the range below, and the smallest served width."""
    trained = set(target.trained_widths())
    gaps = [h for h in range(target.train_min_width, target.max_width) if h not in trained]
    between = {min(gaps, key=lambda h: abs(h - f * target.max_width)) for f in (0.85, 0.4)} if gaps else set()
    below = {target.min_width, (target.min_width + target.train_min_width) // 2} - trained
    return sorted(between | below, reverse=True)


@torch.no_grad()
def recalibrate(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Slimmable networks' BN calibration: every BatchNorm's running statistics set to those of
    `images` in one batch (exact and deterministic); the model is returned in eval mode."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one batch gives its exact statistics
    model.train()(images)
    return model.eval()


class MorphicNet:
    """A trained hypernetwork together with the fixed weights of its target family."""

    def __init__(
        self,
        target: TargetConfig,
        hypernet: HyperNetwork,
        fixed: dict[str, torch.Tensor],
        samples: int = 1,
        noise: float = 1.0,
        seed: int = 0,
        calibration: torch.Tensor | None = None,
        lattice: bool = False,
    ) -> None:
        if target.batchnorm and calibration is None:
            raise ValueError("a target that keeps BatchNorm needs calibration images")
        self.target = target
        self.family = family(target.family)
        self.hypernet = hypernet.eval()
        self.fixed = fixed
        self.samples = samples
        self.noise = noise
        self.seed = seed
        self.lattice = lattice  # the K weight sets on a lattice over each weight's noise cell (not random)
        self.calibration = calibration  # (N, *input_shape) training images: BatchNorm statistics per width

    @property
    def device(self) -> torch.device:
        return next(self.hypernet.parameters()).device

    @contextmanager
    def allowing(self, lowest: int) -> Iterator[None]:
        """Widths down to `lowest` accepted inside the block: to measure where the checkpoint does
        not serve (below its min_width); the served range is restored on exit."""
        served = self.target
        self.target = replace(served, min_width=min(lowest, served.min_width))
        try:
            yield
        finally:
            self.target = served

    def check_width(self, width: int) -> None:
        lo, hi = self.target.min_width, self.target.max_width
        if not lo <= width <= hi:
            raise InputError(f"width {width} is outside the supported range {lo}..{hi}")

    def shapes(self, width: int) -> dict[str, Shape]:
        return self.family.generated_shapes(self.target, width)

    @torch.no_grad()
    def generate(self, width: int, precision: str = "float32", samples: int | None = None) -> dict[str, torch.Tensor]:
        """The generated tensors at `width`: deterministic, the noise comes from a fixed seed.
        `precision` of the hypernetwork's arithmetic: float32, tf32 (CUDA) or bfloat16; `samples`: K weight
        sets averaged (default: the checkpoint's own)."""
        self.check_width(width)
        k = self.samples if samples is None else samples
        shapes = self.shapes(width)
        gen = torch.Generator().manual_seed(self.seed)
        noise = self.noise if k > 1 else 0.0
        tensors = self.hypernet.synthesize(list(shapes.values()), k, noise, gen, precision, self.lattice)
        return dict(zip(shapes, tensors, strict=True))

    def state_dict(self, width: int, precision: str = "float32", samples: int | None = None) -> dict[str, torch.Tensor]:
        """The served network's tensors at `width`: fixed and generated, and where the target keeps
        BatchNorm, its statistics measured at this width on the calibration images, then folded."""
        state = {**self.fixed, **self.generate(width, precision, samples)}
        return self.calibrate(width, state) if self.target.batchnorm else state

    def calibrate(self, width: int, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The generated network with BatchNorm at `width`, recalibrated on the calibration images,
        folded into the convolutions."""
        assert self.calibration is not None
        model = self.family.generated_net(self.target, width).to(self.device)
        model.load_state_dict(state, strict=False)  # the statistics are measured below
        return self.family.fold(recalibrate(model, self.calibration.to(self.device)))

    def synthesize(self, width: int) -> nn.Module:
        """A torch model of `width` with generated weights, on the hypernetwork's device."""
        self.check_width(width)
        model = self.family.build(self.target, width).to(self.device)
        model.load_state_dict(self.state_dict(width))
        return model.eval()

    def param_count(self, width: int) -> int:
        """Fixed plus generated parameters at `width`, from shapes alone (no model is built)."""
        fixed = sum(v.numel() for v in self.fixed.values())
        served = replace(self.target, batchnorm=False)  # BatchNorm is folded away before serving
        return fixed + sum(math.prod(shape) for shape in self.family.generated_shapes(served, width).values())
