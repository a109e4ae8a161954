"""What a generated network is compared with: an individually trained network of the same width, L1-norm
channel pruning of the pretrained network without fine-tuning (notes section 6a), and a universally slimmable
network of the same builder (neumeta_core.slimmable).

Training-side: the trained baselines are built from the checkpoint's builder (target.model) with the teacher's
recipe. Each run is cached the moment it finishes, keyed by (builder source, data, recipe, seed, width or
range), so an interrupted sweep resumes where it stopped and a rerun with nothing changed trains nothing."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import multiprocessing
import os
import pickle
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from neumeta_core import checkpoint, data, export, permute, slimmable
from neumeta_core.checkpoint import Checkpoint
from neumeta_core.config import TargetConfig, TrainConfig
from neumeta_core.data import Split
from neumeta_core.distributed import SINGLE, World
from neumeta_core.errors import InputError
from neumeta_core.progress import Progress
from neumeta_core.resume import Resumable
from neumeta_core.sampling import ratio_for
from neumeta_core.structure import build_at, load_builder
from neumeta_core.train import accuracy, pretrain

VERSION = 1  # of what a cached run computes: raise it when the training of a baseline changes
RECIPE = ("seed", "batch_size", "pretrain_epochs", "pretrain_lr", "pretrain_optimizer", "pretrain_weight_decay")


def l1_pruned(ckpt: Checkpoint, width: int) -> dict[str, torch.Tensor]:
    """The pretrained network with, in each channel group that follows the width, the channels of largest
    L1 norm kept: the norm of every weight (two or more dimensions) that writes the channel (axis 0), groups
    in network order. The pretrained BatchNorm statistics are pruned with them, not recalibrated."""
    if ckpt.teacher is None:
        raise InputError("this checkpoint holds no pretrained weights; retrain it")
    structure = ckpt.structure
    pruned = dict(ckpt.teacher)
    covered = set()
    position = {name: i for i, name in enumerate(structure.rules)}
    # in network order (a group's place: its first writer's in the state dict); each group's norms are taken
    # after the groups before it are pruned, so a layer's filters are judged on the inputs that remain
    groups = sorted(
        structure.hidden_groups().values(),
        key=lambda g: min(position[n] for n, axis, _ in g if axis == 0),
    )
    for group in groups:
        writers = [n for n, axis, _ in group if axis == 0 and pruned[n].dim() >= 2]
        first, axis, factor = group[0]
        channels = pruned[first].shape[axis] // factor
        norms = sum(pruned[n].abs().reshape(channels, -1).sum(dim=1) for n in writers)
        wanted = structure.rules[first].at(width)[axis] // factor
        keep = torch.as_tensor(norms).topk(wanted).indices.sort().values
        for name, ax, f in group:
            idx = (keep[:, None] * f + torch.arange(f)).reshape(-1)
            pruned[name] = pruned[name].index_select(ax, idx)
            covered.add((name, ax))
    missing = [(n, a) for n in structure.generated for a in structure.rules[n].axes if (n, a) not in covered]
    if missing:
        raise InputError(f"{missing[0][0]} follows the width outside any permutable channel group: no L1 baseline")
    return {**ckpt.morph.fixed, **pruned}


def onnx_accuracy(ckpt: Checkpoint, state: dict[str, torch.Tensor], width: int, split: Split) -> float:
    body = export.to_onnx(ckpt.graph(width), state)
    return export.accuracy(body, split.x_test.numpy(), split.y_test.numpy())


def individual(
    ref: str, cfg: TrainConfig, split: Split, width: int, seed: int, progress: bool = True
) -> dict[str, Any]:
    """build(width) trained on its own with the teacher's recipe: held-out accuracy (%), seconds, parameters."""
    return trained_alone(ref, cfg, split, width, seed, progress)[1]


def trained_alone(
    ref: str,
    cfg: TrainConfig,
    split: Split,
    width: int,
    seed: int,
    progress: Progress | bool = True,
    resume: Resumable | None = None,
    world: World = SINGLE,
) -> tuple[nn.Module, dict[str, Any]]:
    """The individual network itself, with its record; `resume`: a training run's state (the teacher's phase);
    `world`: the ranks that share its batches."""
    torch.manual_seed(seed)  # the initial weights too
    started = time.perf_counter()
    model = pretrain(load_builder(ref), replace(cfg, seed=seed), split, width, progress, resume, world)
    seconds = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    acc = accuracy(model, split.x_test, split.y_test)
    return model, {"accuracy": acc, "seconds": round(seconds, 1), "params": params}


def slimmable_run(
    ref: str, cfg: TrainConfig, split: Split, low: int, high: int, widths: list[int], progress: bool = True
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A universally slimmable build(width) trained on low..high with the teacher's recipe: accuracy (%) at each
    of `widths`, seconds, and its full-width state."""
    build = load_builder(ref)
    started = time.perf_counter()
    state = slimmable.train(build, cfg, split, low, high, progress)
    seconds = time.perf_counter() - started
    acc = slimmable.evaluate(build, state, low, high, widths, split)
    params = sum(p.numel() for p in build_at(build, high).parameters())
    return {"accuracy": {str(w): a for w, a in acc.items()}, "seconds": round(seconds, 1), "params": params}, state


def source_digest(ref: str) -> str:
    """sha256 of the source file that defines the builder: a changed network is a different run."""
    build = load_builder(ref)
    path = inspect.getsourcefile(build)
    text = Path(path).read_bytes() if path else inspect.getsource(build).encode()
    return hashlib.sha256(text).hexdigest()


def data_digest(split: Split) -> str:
    """sha256 over the labels and the images' bytes: the same data set, wherever it was read from."""
    h = hashlib.sha256()
    for t in (split.x_train, split.y_train, split.x_test, split.y_test):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def identity(target: TargetConfig, cfg: TrainConfig, split: Split) -> dict[str, Any]:
    """What determines a baseline run besides its seed and width: the builder (its reference and source), the
    data and the teacher's recipe."""
    recipe = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig) if f.name in RECIPE}
    return {"builder": target.model, "source": source_digest(target.model), "data": data_digest(split), **recipe}


def teacher(
    target: TargetConfig,
    cfg: TrainConfig,
    split: Split,
    runs: Runs,
    progress: Progress | bool = True,
    resume: Resumable | None = None,
    world: World = SINGLE,
) -> tuple[nn.Module, dict[str, Any], bool]:
    """The pretrained network at h_max, which is the individual baseline at h_max with the training seed (the
    same builder, recipe, seed and initial weights): loaded when the cache holds its weights, trained and
    cached otherwise (by rank 0 of a data-parallel run), record and weights both. Returns the network (in eval
    mode, where `split` lies), its record (accuracy, seconds, parameters) and whether it came from the cache."""
    width, device = target.max_width, split.y_train.device
    name, what = runs.key("individual", {**identity(target, cfg, split), "seed": cfg.seed, "width": width})
    record = runs.get(name)
    if record is not None and runs.weights(name).is_file():
        model = build_at(load_builder(target.model), width)
        try:
            model.load_state_dict(runs.load_weights(name))
        except (OSError, RuntimeError, pickle.UnpicklingError, EOFError):
            pass  # damaged or from another network: trained again below
        else:
            return model.to(device).eval(), record["result"], True
    model, result = trained_alone(target.model, cfg, split, width, cfg.seed, progress, resume, world)
    if world.main:
        runs.put_weights(name, model.state_dict())
        runs.put(name, what, result)
    return model, result, False


def teacher_from(path: Path, target: TargetConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The network at h_max that the checkpoint at `path` was trained from, so that another recipe can start where
    it did without pretraining again: the checkpoint's stored teacher with its channel permutation undone (it keeps
    the teacher smoothed), on the CPU in eval mode. Refused with an InputError where the checkpoint holds no
    teacher, or the teacher of another network (other generated tensors, shapes or channel groups at h_max). Also
    returns where it came from: the checkpoint's sha256 and the seconds its pretraining took."""
    ckpt = checkpoint.load(Path(path))
    if ckpt.teacher is None:
        raise InputError(f"--teacher-from {path}: the checkpoint holds no teacher (leave the flag out to train one)")
    build = load_builder(target.model)
    model = build_at(build, target.max_width)
    theirs = ckpt.structure.shapes(ckpt.target.max_width)
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items() if name in theirs}
    if ckpt.target.max_width != target.max_width or ours != {k: tuple(v) for k, v in theirs.items()}:
        raise InputError(
            f"--teacher-from {path}: its teacher is {ckpt.target.model} at width {ckpt.target.max_width}, which does "
            f"not match {target.model} at width {target.max_width} (give a checkpoint of the same network)"
        )
    groups = ckpt.structure.groups
    unknown = sorted(set(ckpt.permutation) - set(groups))
    if unknown:  # a checkpoint converted from the old format names its groups as that format did
        raise InputError(
            f"--teacher-from {path}: its permutation names channel groups its network does not have ({unknown[0]}): "
            "the teacher's channel order cannot be restored (a converted checkpoint?)"
        )
    state = dict(ckpt.teacher)
    for name, order in ckpt.permutation.items():  # new position i holds old channel order[i]: put each back
        state = permute.apply_order(state, groups[name], torch.tensor(order).argsort().tolist())
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"--teacher-from {path}: its teacher does not load into {target.model}: {e}") from None
    return model.eval(), {"from": ckpt.digest, "seconds": ckpt.metadata.get("teacher_seconds")}


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neumeta" / "baselines"


@dataclass(frozen=True)
class Runs:
    """Finished baseline runs, one JSON file each (and a slimmable network's weights beside it), named by the
    digest of what determines the result."""

    root: Path

    def key(self, kind: str, fields_: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        what = {"kind": kind, "version": VERSION, **fields_}
        digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]
        return f"{kind}-{digest}", what

    def get(self, name: str) -> dict[str, Any] | None:
        path = self.root / f"{name}.json"
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged record is a run not yet made
        return record if isinstance(record, dict) and "result" in record else None

    def put(self, name: str, what: dict[str, Any], result: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic(self.root / f"{name}.json", (json.dumps({"key": what, "result": result}, indent=1) + "\n").encode())

    def weights(self, name: str) -> Path:
        return self.root / f"{name}.pt"

    def put_weights(self, name: str, state: dict[str, torch.Tensor]) -> None:
        """A run's network beside its record, written atomically (on the CPU)."""
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in state.items()}, buffer)
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic(self.weights(name), buffer.getvalue())

    def load_weights(self, name: str) -> dict[str, torch.Tensor]:
        return torch.load(self.weights(name), map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


def _atomic(path: Path, body: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(body)
    tmp.replace(path)


_SPLITS: dict[tuple[str, str | None], Split] = {}


def _split(source: tuple[str, str | None]) -> Split:
    """A worker's data set, read once per process."""
    if source not in _SPLITS:
        _SPLITS[source] = data.load(*source)
    return _SPLITS[source]


def _job(kind: str, ref: str, cfg: TrainConfig, source: tuple[str, str | None], args: tuple[Any, ...]) -> Any:
    """One baseline run in a worker process: one torch thread, data read there."""
    torch.set_num_threads(1)
    split = _split(source)
    result = _execute(kind, ref, cfg, split, args, progress=False)
    return result if kind == "individual" else (result[0], {k: v.cpu() for k, v in result[1].items()})


def _execute(kind: str, ref: str, cfg: TrainConfig, split: Split, args: tuple[Any, ...], progress: bool) -> Any:
    if kind == "individual":
        width, seed = args
        return individual(ref, cfg, split, width, seed, progress=progress)
    low, high, widths = args
    return slimmable_run(ref, cfg, split, low, high, widths, progress=progress)


@dataclass
class Plan:
    """The baseline runs one comparison needs, and what each gave."""

    target: TargetConfig
    train: TrainConfig  # the teacher's recipe: every baseline trains with it
    split: Split
    widths: list[int]
    seeds: list[int]
    runs: Runs
    slimmable: bool = True
    source: tuple[str, str | None] = ("digits", None)
    results: dict[str, dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        t = self.target
        base = identity(t, self.train, self.split)
        self.individual = {
            (w, s): self.runs.key("individual", {**base, "seed": s, "width": w})
            for s in self.seeds  # seed by seed: an interrupted sweep has whole tables
            for w in self.widths
        }
        self.low, self.high = t.train_min_width, t.max_width
        self.slim = self.runs.key("slimmable", {**base, "seed": 0, "low": self.low, "high": self.high})

    def missing(self) -> list[tuple[str, str, dict[str, Any], tuple[Any, ...]]]:
        todo: list[tuple[str, str, dict[str, Any], tuple[Any, ...]]] = []
        if self.slimmable and self._slimmable_missing():
            todo.append(("slimmable", *self.slim, (self.low, self.high, self.widths)))  # the longest: first
        for (width, seed), (name, what) in self.individual.items():
            if self.runs.get(name) is None:
                todo.append(("individual", name, what, (width, seed)))
        return todo

    def _slimmable_missing(self) -> bool:
        """No record, or one without some width whose weights are gone too (otherwise: evaluated from them)."""
        name, what = self.slim
        record = self.runs.get(name)
        if record is None:
            return True
        absent = [w for w in self.widths if str(w) not in record["result"]["accuracy"]]
        if not absent:
            return False
        if not self.runs.weights(name).is_file():
            return True
        build = load_builder(self.target.model)
        state = self.runs.load_weights(name)
        more = slimmable.evaluate(build, state, self.low, self.high, absent, self.split)
        record["result"]["accuracy"].update({str(w): a for w, a in more.items()})
        self.runs.put(name, what, record["result"])
        return False

    def run(self, jobs: int = 1, progress: bool = True) -> None:
        """Every missing run, `jobs` at a time in worker processes (1: here), each cached as it finishes."""
        todo = self.missing()
        ref, cfg = self.target.model, self.train
        bar = tqdm(total=len(todo), desc="baseline runs", disable=not progress or not todo, unit="run")

        def finished(kind: str, name: str, what: dict[str, Any], result: Any) -> None:
            if kind == "slimmable":
                result, state = result
                self.runs.put_weights(name, state)
            self.runs.put(name, what, result)
            bar.update()

        if jobs <= 1:
            for kind, name, what, args in todo:
                finished(kind, name, what, _execute(kind, ref, cfg, self.split, args, progress))
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(jobs, mp_context=context) as pool:
                futures: dict[Future[Any], tuple[str, str, dict[str, Any]]] = {
                    pool.submit(_job, kind, ref, cfg, self.source, args): (kind, name, what)
                    for kind, name, what, args in todo
                }
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        finished(*futures[future], future.result())
        bar.close()
        print(f"baseline runs: {len(todo)} trained, {self.total() - len(todo)} from {self.runs.root}", file=sys.stderr)

    def total(self) -> int:
        return len(self.individual) + int(self.slimmable)

    def individual_result(self, width: int, seed: int) -> dict[str, Any]:
        record = self.runs.get(self.individual[(width, seed)][0])
        assert record is not None
        return record["result"]

    def slimmable_result(self) -> dict[str, Any]:
        record = self.runs.get(self.slim[0])
        assert record is not None
        return record["result"]


def compare(
    ckpt: Checkpoint,
    split: Split,
    widths: list[int],
    samples: list[int],
    seeds: list[int],
    progress: bool = True,
    runs: Runs | None = None,
    slim: bool = True,
    jobs: int = 1,
    source: tuple[str, str | None] = ("digits", None),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per width: hypernetwork accuracy per K (and synthesis seconds) of the served ONNX file,
    individually trained (mean over `seeds`, none: skipped), L1-pruned and universally slimmable accuracy,
    parameter count, and whether training saw the width; and the training seconds of each method."""
    t, morph = ckpt.target, ckpt.morph
    plan = Plan(t, ckpt.train, split, widths, seeds, runs or Runs(default_cache()), slim, source)
    plan.run(jobs, progress)
    rows = []
    for width in widths:
        row: dict[str, Any] = {
            "width": width,
            "ratio": ratio_for(width, t.max_width),
            "params": morph.param_count(width),
            "seen_in_training": width in t.trained_widths(),
            "served": t.min_width <= width <= t.max_width,
        }
        with morph.allowing(width):  # widths below the served range are measured too
            for k in samples:
                started = time.perf_counter()
                state = morph.state_dict(width, samples=k)
                row[f"synthesis_seconds_k{k}"] = time.perf_counter() - started
                row[f"neumeta_k{k}"] = onnx_accuracy(ckpt, state, width, split)
        if ckpt.teacher is not None:
            try:
                row["l1_pruned"] = onnx_accuracy(ckpt, l1_pruned(ckpt, width), width, split)
            except InputError as exc:  # a width axis outside every permutable group: no such baseline
                row["l1_pruned_unavailable"] = str(exc)
        if seeds:
            results = [plan.individual_result(width, seed) for seed in seeds]
            row["individual"] = float(np.mean([r["accuracy"] for r in results]))
            row["individual_runs"] = [r["accuracy"] for r in results]
            row["individual_seconds"] = float(np.mean([r["seconds"] for r in results]))
        if plan.slimmable:
            row["slimmable"] = plan.slimmable_result()["accuracy"][str(width)]
        rows.append(row)
    seconds = ckpt.metadata.get("train_seconds")
    if seconds is not None:  # the teacher counts, whether it was trained inside train() or beside it (cached)
        seconds += ckpt.metadata.get("teacher_seconds", 0.0)
    times: dict[str, Any] = {"hypernetwork_seconds": seconds}
    if seeds:
        times["individual_seconds_per_seed"] = sum(r["individual_seconds"] for r in rows)
    if plan.slimmable:
        times["slimmable_seconds"] = plan.slimmable_result()["seconds"]
        times["slimmable_bytes"] = 4 * plan.slimmable_result()["params"]
    return rows, times
