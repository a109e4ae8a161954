"""A self-describing checkpoint: configs, fixed and hypernetwork weights, permutation,
width ranges, training metadata and the accuracy table, in one torch file.

It loads with `weights_only=True` (tensors and plain values only) and is addressed by the
sha256 of its bytes, which every cache key starts with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neumeta_core.config import HyperNetConfig, TargetConfig, TrainConfig
from neumeta_core.hypernet import HyperNetwork
from neumeta_core.sampling import MorphicNet
from neumeta_core.targets import family
from neumeta_core.train import TrainResult

FORMAT = "neumeta-checkpoint/1"
BUNDLED = Path(__file__).parent / "checkpoints" / "digits_full.pt"  # every layer generated: the default model
BLOCK = Path(__file__).parent / "checkpoints" / "digits_cnn.pt"  # the earlier bundle: only the residual block


@dataclass(frozen=True)
class Checkpoint:
    morph: MorphicNet
    target: TargetConfig
    hypernet: HyperNetConfig
    train: TrainConfig
    permutation: dict[str, list[int]]  # channel group -> order applied to the pretrained weights
    teacher: dict[str, torch.Tensor] | None  # the pretrained generated tensors (older files lack them)
    accuracy: dict[int, float]  # width -> held-out accuracy (%) at training time
    metadata: dict[str, Any]
    digest: str  # sha256 of the file

    @property
    def name(self) -> str:
        return self.target.family

    def generated_tensors(self) -> list[str]:
        return list(family(self.target.family).generated_shapes(self.target, self.target.max_width))


def digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(path: str | Path, result: TrainResult, train: TrainConfig) -> str:
    morph = result.morph
    payload = {
        "format": FORMAT,
        "target": morph.target.to_dict(),
        "hypernet": morph.hypernet.cfg.to_dict(),
        "train": train.to_dict(),
        "generated": list(morph.shapes(morph.target.max_width)),
        "widths": {
            "trained": morph.target.trained_widths(),
            "allowed": [morph.target.min_width, morph.target.max_width],
        },
        "permutation": result.orders,
        "accuracy": {str(h): acc for h, acc in result.accuracy.items()},
        "metadata": result.metadata,
        "fixed_state": {k: v.detach().cpu().contiguous() for k, v in morph.fixed.items()},
        "teacher_state": {k: v.detach().cpu().contiguous() for k, v in result.teacher.items()},
        "hypernet_state": {k: v.detach().cpu().contiguous() for k, v in morph.hypernet.state_dict().items()},
    }
    if morph.calibration is not None:
        payload["calibration"] = morph.calibration.detach().cpu().contiguous()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return digest(path)


def load(path: str | Path = BUNDLED, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the hypernetwork from the stored configs; raise ValueError on a foreign file."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # a truncated or foreign file: say which and why
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path} is not a readable checkpoint: {first_line}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    target = TargetConfig.from_dict(payload["target"])
    hyper = HyperNetConfig.from_dict(payload["hypernet"])
    train = TrainConfig.from_dict(payload["train"])
    hypernet = HyperNetwork(hyper, len(payload["generated"]), target.max_width)
    hypernet.load_state_dict(payload["hypernet_state"])
    hypernet.to(device)
    fixed = {k: v.to(device) for k, v in payload["fixed_state"].items()}
    calibration = payload.get("calibration")
    calibration = None if calibration is None else calibration.to(device)  # once, not per synthesis
    lattice = train.quadrature == "lattice"
    morph = MorphicNet(target, hypernet, fixed, train.samples, train.coord_noise, train.seed, calibration, lattice)
    return Checkpoint(
        morph=morph,
        target=target,
        hypernet=hyper,
        train=train,
        permutation={g: list(order) for g, order in payload["permutation"].items()},
        teacher=payload.get("teacher_state"),
        accuracy={int(h): float(a) for h, a in payload["accuracy"].items()},
        metadata=dict(payload["metadata"]),
        digest=digest(path),
    )
