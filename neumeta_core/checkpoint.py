"""A self-describing checkpoint: configs, the network's structure and exported graphs, fixed and hypernetwork
weights, the BatchNorm statistics and reference logits at every stored width, the permutation, width ranges,
training metadata and the accuracy table, in one torch file.

It loads with `weights_only=True` (tensors and plain values only) and is addressed by the sha256 of its
bytes, which every cache key starts with. Nothing in it is code: the graphs are ONNX, which onnxruntime
interprets; loading imports neither the training code nor the module the network was written in.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from neumeta_core.builders import BLOCK, BUNDLED
from neumeta_core.config import HyperNetConfig, TargetConfig, TrainConfig
from neumeta_core.errors import InputError
from neumeta_core.export import Graph
from neumeta_core.hypernet import HyperNetwork
from neumeta_core.network import Structure, probe
from neumeta_core.sampling import MorphicNet

if TYPE_CHECKING:
    from neumeta_core.train import TrainResult

FORMAT = "neumeta-checkpoint/2"
# The fields of a FORMAT file: a writer that adds one must name a new format, and load() refuses a field
# it does not know instead of dropping it. Configs are held to the same rule (config.py).
REQUIRED = frozenset(
    {"format", "target", "hypernet", "train", "structure", "graphs", "data", "widths", "permutation", "accuracy"}
    | {"metadata", "fixed_state", "hypernet_state", "statistics", "reference"}
)
OPTIONAL = frozenset({"teacher_state", "calibration"})  # BatchNorm networks keep calibration images
__all__ = ["BLOCK", "BUNDLED", "Checkpoint", "Data", "load", "save"]


@dataclass(frozen=True)
class Data:
    """What the network reads and says: the data set, one input's shape, the class names."""

    name: str
    input_shape: tuple[int, ...]
    labels: list[str]


@dataclass(frozen=True)
class Checkpoint:
    morph: MorphicNet
    target: TargetConfig
    hypernet: HyperNetConfig
    train: TrainConfig
    permutation: dict[str, list[int]]  # channel group -> order applied to the pretrained weights
    teacher: dict[str, torch.Tensor] | None  # the pretrained tensors L1 pruning starts from
    accuracy: dict[int, float]  # width -> held-out accuracy (%) at training time
    metadata: dict[str, Any]
    digest: str  # sha256 of the file
    data: Data
    reference: dict[int, dict[int, np.ndarray]]  # K -> width -> logits on probe() of build(width), served weights
    calibration: torch.Tensor | None

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def structure(self) -> Structure:
        return self.morph.structure

    def graph(self, width: int) -> Graph:
        return self.morph.graphs[width]

    def generated_tensors(self) -> list[str]:
        return list(self.structure.generated)

    def probe(self) -> torch.Tensor:
        """The fixed input batch the reference logits were computed on."""
        return probe(self.data.input_shape, len(next(iter(self.reference[self.morph.samples].values()))))


def digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _graphs(graphs: dict[int, Graph]) -> dict[str, Any]:
    unique: dict[bytes, int] = {}
    for g in graphs.values():
        unique.setdefault(g.template, len(unique))
    return {
        "templates": [torch.frombuffer(bytearray(t), dtype=torch.uint8) for t in unique],
        "width": {str(w): unique[g.template] for w, g in graphs.items()},
    }


def save(path: str | Path, result: TrainResult, train: TrainConfig) -> str:
    morph = result.morph
    shape = list(morph.structure.input_shape)
    data = {"name": result.dataset or morph.target.dataset, "input_shape": shape, "labels": result.labels}
    payload = {
        "format": FORMAT,
        "target": morph.target.to_dict(),
        "hypernet": morph.hypernet.cfg.to_dict(),
        "train": train.to_dict(),
        "structure": morph.structure.to_dict(),
        "graphs": _graphs(morph.graphs),
        "data": data,
        "widths": {
            "trained": morph.target.trained_widths(),
            "allowed": [morph.target.min_width, morph.target.max_width],
            "stored": [min(morph.graphs), max(morph.graphs)],
        },
        "permutation": result.orders,
        "accuracy": {str(h): acc for h, acc in result.accuracy.items()},
        "metadata": result.metadata,
        "fixed_state": _cpu(morph.fixed),
        "teacher_state": _cpu(result.teacher),
        "hypernet_state": _cpu(morph.hypernet.state_dict()),
        "statistics": {str(k): {str(w): _cpu(s) for w, s in per.items()} for k, per in morph.statistics.items()},
        "reference": {str(k): _cpu({str(w): v for w, v in per.items()}) for k, per in result.reference.items()},
    }
    if result.calibration is not None:
        payload["calibration"] = result.calibration.detach().cpu().contiguous()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return digest(path)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


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
        structure = Structure.from_dict(payload["structure"])
        full = list(structure.shapes(target.max_width).values())
        hypernet = HyperNetwork(hyper, len(structure.generated), target.max_width, full)
        hypernet.load_state_dict(payload["hypernet_state"])
        shared = [Graph(t.numpy().tobytes(), structure.folds) for t in payload["graphs"]["templates"]]
        graphs = {int(w): shared[i] for w, i in payload["graphs"]["width"].items()}
        statistics = {
            int(k): {int(w): {n: v.to(device) for n, v in s.items()} for w, s in per.items()}
            for k, per in payload["statistics"].items()
        }
        reference = {int(k): {int(w): v.numpy() for w, v in per.items()} for k, per in payload["reference"].items()}
        info = payload["data"]
        about = Data(str(info["name"]), tuple(int(d) for d in info["input_shape"]), [str(c) for c in info["labels"]])
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except (RuntimeError, TypeError, KeyError, ValueError, IndexError):  # tensors that do not fit the configs
        raise InputError(f"{path} is a damaged checkpoint: its weights do not fit its configs") from None
    hypernet.to(device)
    fixed = {k: v.to(device) for k, v in payload["fixed_state"].items()}
    lattice = train.quadrature == "lattice"
    morph = MorphicNet(
        target, structure, hypernet, fixed, statistics, graphs, train.samples, train.final_noise, train.seed, lattice
    )
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
        data=about,
        reference=reference,
        calibration=payload.get("calibration"),
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
