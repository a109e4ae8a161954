"""A self-describing checkpoint: configs, fixed and hypernetwork weights, permutation,
width ranges, training metadata and the accuracy table, in one torch file.

It loads with `weights_only=True` (tensors and plain values only) and is addressed by the
sha256 of its bytes, which every cache key starts with.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neumeta_core import names
from neumeta_core.config import HyperNetConfig, TargetConfig, TrainConfig
from neumeta_core.errors import InputError
from neumeta_core.hypernet import HyperNetwork
from neumeta_core.sampling import MorphicNet
from neumeta_core.targets import family
from neumeta_core.train import TrainResult

FORMAT = "neumeta-checkpoint/1"
# The fields of a FORMAT file: a writer that adds one must name a new format, and load() refuses a field
# it does not know instead of dropping it. Configs are held to the same rule (config.py).
REQUIRED = frozenset(
    {"format", "target", "hypernet", "train", "generated", "widths", "permutation", "accuracy", "metadata"}
    | {"fixed_state", "hypernet_state"}
)
OPTIONAL = frozenset({"teacher_state", "calibration"})  # older files lack the teacher; BatchNorm targets calibrate
BUNDLED = names.BUNDLED  # every layer generated: the default model
BLOCK = names.BLOCK  # the earlier bundle: only the residual block


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
    """Rebuild the hypernetwork from the stored configs. The file is read once: its digest is that of
    the bytes loaded. InputError, naming the file, for anything that is not a checkpoint this code reads."""
    path = Path(path)
    data = read(path)
    payload = _payload(path, data)
    try:
        target = TargetConfig.from_dict(payload["target"])
        hyper = HyperNetConfig.from_dict(payload["hypernet"])
        train = TrainConfig.from_dict(payload["train"])
        hypernet = HyperNetwork(hyper, len(payload["generated"]), target.max_width)
        hypernet.load_state_dict(payload["hypernet_state"])
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except (RuntimeError, TypeError, KeyError):  # tensors that do not fit the stored configs
        raise InputError(f"{path} is a damaged checkpoint: its weights do not fit its configs") from None
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
        digest=hashlib.sha256(data).hexdigest(),
    )


def read(path: Path) -> bytes:
    """The file's bytes, or InputError saying why they cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a checkpoint file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _payload(path: Path, data: bytes) -> dict[str, Any]:
    """The stored dict, checked against the fields of the format it names. Nothing of torch's message is
    repeated: for a foreign pickle it advises `weights_only=False`, which would run the file's code."""
    if not zipfile.is_zipfile(io.BytesIO(data)):  # torch.save writes a zip archive
        raise InputError(f"{path} is not a NeuMeta checkpoint (not a torch file, or a truncated one)")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"{path} is not a NeuMeta checkpoint: it holds Python objects that a checkpoint never does "
            "(it was not written by `neumeta train`), and it is not loaded"
        ) from None
    except Exception:  # a damaged archive: torch raises many types
        raise InputError(f"{path} is a damaged torch file (truncated or altered), not a loadable checkpoint") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str):
        raise InputError(f"{path} is not a NeuMeta checkpoint (a torch file without a {FORMAT!r} format field)")
    if payload["format"] != FORMAT:
        raise InputError(
            f"{path} is in format {payload['format']!r}; this version of neumeta-serve reads {FORMAT!r} "
            "(a newer format needs a newer version)"
        )
    missing = sorted(REQUIRED - set(payload))
    unknown = sorted(set(payload) - REQUIRED - OPTIONAL)
    if missing:
        raise InputError(f"{path} is a damaged checkpoint: it lacks {', '.join(missing)}")
    if unknown:
        raise InputError(
            f"{path} holds fields this version of neumeta-serve does not know ({', '.join(unknown)}) under "
            f"{FORMAT!r}: it was written by a newer version, which must name a new format"
        )
    return payload
