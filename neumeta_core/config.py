"""Typed configuration for the method: frozen dataclasses, stored inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Self

from neumeta_core.builders import DEFAULT, RECIPES
from neumeta_core.errors import InputError


class _Serialisable:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Fields missing from `data` take their defaults (an older file); a field this code does not know
        is refused, never dropped: it was written by a newer version and would change what the file means."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(
                f"{cls.__name__} has no field {', '.join(map(repr, unknown))}: the file was written by a newer "
                f"version of neumeta-serve (known fields: {', '.join(sorted(known))})"
            )
        types = {f.name: f.type for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: tuple(v) if isinstance(v, list) and "tuple" in str(types[k]) else v for k, v in data.items()})


@dataclass(frozen=True)
class TargetConfig(_Serialisable):
    """A network of any width and the widths it is trained and served at."""

    model: str = RECIPES[DEFAULT][0]  # build(width): FILE.py:FUNCTION, package.module:FUNCTION
    dataset: str = "digits"  # digits | idx | cifar10 | folder
    max_width: int = 32  # h_max: the pretrained width, gamma = 1 - h / h_max
    train_min_width: int = 8  # widths drawn in training: max_width down to train_min_width ...
    train_stride: int = 2  # ... in steps of train_stride, so the widths between are never seen
    # widths of that range training never draws either: kept out to measure the widths between trained ones
    held_out: tuple[int, ...] = ()
    min_width: int = 4  # smallest width the service hands out
    generate: tuple[str, ...] = ()  # modules the hypernetwork generates; empty: every module that follows h

    @property
    def name(self) -> str:
        """The builder's function name: what the service calls the model."""
        return self.model.rpartition(":")[2]

    def stored_widths(self) -> list[int]:
        """The widths a checkpoint holds graphs and statistics for: the served range, and below it down to
        half the smallest served width, to measure where quality ends."""
        return list(range(max(1, self.min_width // 2), self.max_width + 1))

    def trained_widths(self) -> list[int]:
        """The widths training draws from, h_max always among them."""
        held = set(self.held_out)
        return [h for h in range(self.max_width, self.train_min_width - 1, -self.train_stride) if h not in held]

    def trained_description(self) -> str:
        """The trained widths in words: "10..32 step 2", "10..32 except 27, 13"."""
        trained = self.trained_widths()
        text = f"{trained[-1]}..{trained[0]}" + (f" step {self.train_stride}" if self.train_stride > 1 else "")
        return text + (f" except {', '.join(map(str, self.held_out))}" if self.held_out else "")


@dataclass(frozen=True)
class HyperNetConfig(_Serialisable):
    """The implicit network: one residual MLP per generated tensor (method notes section 2)."""

    hidden: int = 256
    layers: int = 4
    frequencies: int = 6  # Fourier bands; 16-32 in the paper overflow float32 (notes section 1)
    output_dim: int = 9  # one query returns a whole 3x3 kernel
    residual_init: float = 0.1
    centred: bool = False  # positions (o + 0.5) / S0 and (i + 0.5) / S1: cell centres, the same for every width
    sizes: bool = True  # the layer sizes S0/N, S1/N as inputs; False: one function of position for all widths
    # a learned full-width tensor per generated tensor, area-resampled to each width, which the MLPs correct
    # (hypernet.resampled; docs/results/fashion_mnist/notebook.md, G rows)
    grid: bool = False


@dataclass(frozen=True)
class TrainConfig(_Serialisable):
    seed: int = 0
    batch_size: int = 64
    pretrain_epochs: int = 120
    pretrain_lr: float = 2e-3
    pretrain_optimizer: Literal["adam", "sgd"] = "adam"  # sgd: momentum 0.9, nesterov
    pretrain_weight_decay: float = 0.0
    warm_steps: int = 4000  # fit the hypernetwork to the teacher resampled to each width
    warm_lr: float = 2e-3
    steps: int = 10_000  # task training at random widths (5,000 left h = 24 tied with L1 pruning; docs/training.md)
    lr: float = 5e-4
    weight_decay: float = 1e-2
    coord_noise: float = 1.0  # uniform noise of width 1: +-0.5 index units (notes section 3)
    noise_inverse: bool = False  # training noise coord_noise * h_min / h: full at the smallest trained width
    # the coordinate noise (and the grid's cell jitter) at the end of the task phase, as a fraction of coord_noise:
    # it falls from coord_noise with a cosine, as the learning rate; served weights average over the final noise
    noise_end: float = 1.0
    # the smallest trained width keeps the full noise to the end (noise_end applies to the others): its jittered
    # cells are what the widths below the trained range extrapolate from
    full_noise_smallest: bool = False
    recon_weight: float = 1.0  # magnitude-weighted MSE to the teacher, at full width only
    norm_weight: float = 1e-4  # sum of Frobenius norms of the generated tensors
    grad_clip: float = 10.0  # value clipping, as released
    accumulation: int = 1  # batches per optimiser step; > 1: each window's first batch is at h_max
    sandwich: bool = False  # with accumulation: the first batch at the smallest trained width, the second at h_max
    kd_weight: float = 1.0  # distillation from the pretrained h_max network (not in the paper; measured)
    kd_temperature: float = 2.0
    ema_decay: float = 0.995
    permute: Literal["all", "hidden", "none"] = "hidden"  # channel groups smoothed; see docs/training.md
    samples: int = 5  # K: weight sets averaged at inference (one clean, K - 1 noisy)
    # where the K sets lie: "random" (one clean, K - 1 with noise from a fixed seed, as released) or
    # "lattice" (a rank-1 lattice over each weight's noise cell: a deterministic quadrature)
    quadrature: Literal["random", "lattice"] = "random"
    # > 0: the task phase is the universally slimmable recipe for this many epochs (every batch at h_max, the
    # smallest trained width and two random trained widths; the others learn h_max's detached predictions)
    # instead of `steps` steps at one random width
    slim_epochs: float = 0.0
    fixed_lr: float = 0.0  # > 0: the tensors not generated are trained too, shared by all widths (follow-up: 7e-5)
    # > 0: the BatchNorm statistics of every width are measured on the first this many training images (the slimmable
    # baseline recalibrates on 2,048); 0: on the images the checkpoint keeps for int8 calibration (at most 512)
    statistics_images: int = 0

    @property
    def final_noise(self) -> float:
        """The coordinate noise training ends with: what the served K weight sets average over."""
        return self.coord_noise * self.noise_end


def presets(name: str) -> tuple[TargetConfig, HyperNetConfig, TrainConfig]:
    """One of our builders (neumeta_core.builders) with its recipe; any other `--model` gets the recipe of the
    default builder (every layer generated), the best measured for such networks."""
    if name not in RECIPES:
        _, _, _, hyper, train = RECIPES[DEFAULT]
        return TargetConfig(model=name), HyperNetConfig(**hyper), TrainConfig(**train)
    model, dataset, target, hyper, train = RECIPES[name]
    return TargetConfig(model=model, dataset=dataset, **target), HyperNetConfig(**hyper), TrainConfig(**train)
