"""Typed configuration for the method: frozen dataclasses, stored inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Self

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
        return cls(**data)


@dataclass(frozen=True)
class TargetConfig(_Serialisable):
    """A variable-width target family and the widths it is trained and served at."""

    family: str = "digits_cnn"
    max_width: int = 32  # h_max: the pretrained width, gamma = 1 - h / h_max
    stem_channels: int = 32  # the fixed residual stream the generated block plugs into
    num_classes: int = 10
    train_min_width: int = 8  # widths drawn in training: max_width down to train_min_width ...
    train_stride: int = 2  # ... in steps of train_stride, so the widths between are never seen
    min_width: int = 4  # smallest width the service hands out
    generated_blocks: int = 1  # resnet20: how many of stage 3's blocks are generated, from the last
    skip_init: bool = False  # resnet20: a learnable gate on each generated residual branch (follow-up)
    # digits_full: BatchNorm stays in the generated network (scale and shift generated), its statistics
    # measured at each requested width on the checkpoint's calibration images, then folded for serving
    batchnorm: bool = False

    def trained_widths(self) -> list[int]:
        """The widths training draws from, h_max always among them."""
        return list(range(self.max_width, self.train_min_width - 1, -self.train_stride))


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
    incremental: bool = True  # several generated blocks: add them one at a time, from the last (follow-up)
    fc_lr: float = 0.0  # > 0: the classifier is trained too, shared by all widths (follow-up: 7e-5)
    gate_lr: float = 1e-4  # SkipInit gates (targets with skip_init), shared by all widths
    gate_init: float = 0.0  # a newly generated block starts as the identity (SkipInit)


# Per-family defaults; `neumeta train` flags override single fields.
TARGET_PRESETS: dict[str, TargetConfig] = {
    "digits_cnn": TargetConfig(),
    "mlp": TargetConfig(family="mlp"),
    # every layer generated; h = 8 (gamma 0.75) below the trained widths 10..32, as in the paper
    "digits_full": TargetConfig(family="digits_full", train_min_width=10, min_width=8, batchnorm=True),
    # the paper's setting: layer3.2 generated, h in 32..64 trained, h = 16 (gamma 0.75) never seen
    "resnet20": TargetConfig(
        family="resnet20", max_width=64, stem_channels=64, train_min_width=32, train_stride=1, min_width=8
    ),
}
TRAIN_PRESETS: dict[str, TrainConfig] = {
    # CIFAR-10: the usual ResNet20 schedule for the teacher and the individual nets (SGD 0.1, 200
    # epochs, batch 128, wd 5e-4); the hypernetwork gets 60,000 steps per generated block.
    "resnet20": TrainConfig(
        batch_size=128,
        pretrain_epochs=200,
        pretrain_lr=0.1,
        pretrain_optimizer="sgd",
        pretrain_weight_decay=5e-4,
        warm_steps=4000,
        steps=60_000,
    ),
    # the whole-network recipe: no distillation, task lr 1e-3, K = 4 weight sets on a lattice at inference
    "digits_full": TrainConfig(lr=1e-3, kd_weight=0.0, samples=4, quadrature="lattice"),
}


HYPER_PRESETS: dict[str, HyperNetConfig] = {
    # the whole-network recipe (docs/results/experiments.md): one function of position for every width
    "digits_full": HyperNetConfig(hidden=128, centred=True, sizes=False),
}


def presets(family: str) -> tuple[TargetConfig, HyperNetConfig, TrainConfig]:
    if family not in TARGET_PRESETS:
        raise InputError(f"unknown target family {family!r}; known: {sorted(TARGET_PRESETS)}")
    return TARGET_PRESETS[family], HYPER_PRESETS.get(family, HyperNetConfig()), TRAIN_PRESETS.get(family, TrainConfig())
