"""Convert a neumeta-checkpoint/1 file (one of our builders, from before networks were derived from
`build(width)`) to the current format, keeping its hypernetwork and fixed weights bit for bit:

    python -m neumeta_core.convert OLD.pt NEW.pt

or measure a current checkpoint's BatchNorm statistics again, on the first N training images of its data set
(what `neumeta train` with `statistics_images = N` measures once its hypernetwork is trained):

    python -m neumeta_core.convert --statistics-images N [--data-dir DIR] OLD.pt NEW.pt

The network is derived from the builder of the same name (neumeta_core.builders); its generated tensors
must be the old file's, in the same order and shapes. The BatchNorm statistics and reference logits at
every stored width are measured on the old file's calibration images, as the old service did per request.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from neumeta_core import checkpoint, data
from neumeta_core.builders import RECIPES
from neumeta_core.config import HyperNetConfig, TargetConfig, TrainConfig
from neumeta_core.errors import InputError
from neumeta_core.hypernet import HyperNetwork
from neumeta_core.sampling import MorphicNet
from neumeta_core.structure import Builder, load_builder
from neumeta_core.train import TrainResult, accuracy, evaluation_widths, measure, network, synthesize

OLD_FORMAT = "neumeta-checkpoint/1"
RENAMED = {"fc_lr": "fixed_lr"}
DROPPED = {"incremental", "gate_lr", "gate_init"}  # block-wise training and SkipInit gates: not on this path


def _table(morph: MorphicNet, build: Builder, split: data.Split) -> dict[int, float]:
    """Held-out accuracy (%) at the widths a checkpoint's table holds."""
    widths = evaluation_widths(morph.target)
    return {h: accuracy(synthesize(morph, build, h), split.x_test, split.y_test) for h in widths}


def convert(old: Path, new: Path) -> dict[str, Any]:
    raw = old.read_bytes()
    payload = torch.load(old, map_location="cpu", weights_only=True)
    if payload.get("format") != OLD_FORMAT:
        raise InputError(f"{old} is not a {OLD_FORMAT} file")
    t = payload["target"]
    if t["family"] not in RECIPES:
        raise InputError(f"{old}: no builder named {t['family']!r} in neumeta_core.builders")
    model, dataset = RECIPES[t["family"]][:2]
    keep = ("max_width", "train_min_width", "train_stride", "min_width")
    target = TargetConfig(model=model, dataset=dataset, **{k: t[k] for k in keep})
    train_fields = {RENAMED.get(k, k): v for k, v in payload["train"].items() if k not in DROPPED}
    train = TrainConfig.from_dict(train_fields)
    hyper = HyperNetConfig.from_dict(payload["hypernet"])
    split = data.load(dataset, None)
    net = network(target, split.input_shape, split.classes)
    if net.structure.generated != list(payload["generated"]):
        raise InputError(f"{old}: builder {model} generates {net.structure.generated}, the file {payload['generated']}")
    hypernet = HyperNetwork(hyper, len(net.structure.generated), target.max_width)
    hypernet.load_state_dict(payload["hypernet_state"])
    fixed = dict(payload["fixed_state"])
    module_state = net.build(target.max_width).state_dict()
    for name, tensor in module_state.items():  # BatchNorm's step counters: never read in eval mode
        if name.endswith("num_batches_tracked") and name not in fixed:
            fixed[name] = torch.zeros_like(tensor)
    lattice = train.quadrature == "lattice"
    morph = MorphicNet(
        target, net.structure, hypernet, fixed, {}, net.graphs, train.samples, train.final_noise, train.seed, lattice
    )
    calibration = payload.get("calibration")
    reference = measure(morph, net.build, calibration)
    table = _table(morph, net.build, split)
    meta = dict(payload["metadata"])
    meta["converted_from"] = {"format": OLD_FORMAT, "sha256": hashlib.sha256(raw).hexdigest()}
    teacher = dict(payload.get("teacher_state") or {})
    result = TrainResult(
        morph,
        {g: list(o) for g, o in payload["permutation"].items()},
        teacher,
        float(meta.get("teacher_accuracy", 0.0)),
        table,
        reference,
        calibration,
        list(split.labels),
        meta,
    )
    checkpoint.save(new, result, train)
    old_table = {int(h): float(a) for h, a in payload["accuracy"].items()}
    return {"old": old_table, "new": table}


def remeasure(old: Path, new: Path, images: int, data_dir: Path | None = None) -> dict[str, Any]:
    """`old` with its BatchNorm statistics, reference logits and accuracy table measured again on the first
    `images` training images; the hypernetwork, fixed weights and kept calibration images bit for bit."""
    ckpt = checkpoint.load(old)
    if ckpt.calibration is None:
        raise InputError(f"{old}: its network has no BatchNorm statistics to measure")
    if images < 1:
        raise InputError(f"--statistics-images {images}: give a number of training images >= 1")
    split = data.load(ckpt.target.dataset, data_dir)
    build = load_builder(ckpt.target.model)
    reference = measure(ckpt.morph, build, split.x_train[:images])
    table = _table(ckpt.morph, build, split)
    meta = {**ckpt.metadata, "statistics_remeasured_from": ckpt.digest}
    result = TrainResult(
        ckpt.morph,
        ckpt.permutation,
        dict(ckpt.teacher or {}),
        float(meta.get("teacher_accuracy", 0.0)),
        table,
        reference,
        ckpt.calibration,
        list(ckpt.data.labels),
        meta,
        ckpt.data.name,
    )
    checkpoint.save(new, result, replace(ckpt.train, statistics_images=images))
    return {"old": ckpt.accuracy, "new": table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--statistics-images", type=int, help="measure a current checkpoint's statistics again")
    parser.add_argument("--data-dir", type=Path, help="with --statistics-images: where the data set lies")
    args = parser.parse_args(argv)
    try:
        if args.statistics_images is None:
            tables = convert(args.old, args.new)
        else:
            tables = remeasure(args.old, args.new, args.statistics_images, args.data_dir)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for h in sorted(tables["new"], reverse=True):
        print(f"h={h:3d}  old {tables['old'].get(h, float('nan')):6.2f}%  new {tables['new'][h]:6.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
