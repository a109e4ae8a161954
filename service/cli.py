"""The `neumeta` command: train, sample, eval, serve, fetch.

Bad input (a flag out of range, a missing or foreign file, a bad NEUMETA_* setting, an unreachable server
or one that refuses the request) is one line on stderr and exit status 2; Ctrl-C is one line and 130. Any
other exception is a bug, and keeps its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from neumeta_core import names
from neumeta_core.builders import BUNDLED
from neumeta_core.builders import DEFAULT as DEFAULT_MODEL
from neumeta_core.builders import NAMES as BUILDERS
from neumeta_core.errors import InputError

DATASETS = ("digits", "idx", "cifar10", "folder")  # neumeta_core.data.DATASETS (tested)

if TYPE_CHECKING:
    from neumeta_core import checkpoint

RATIOS = (0.0, 0.25, 0.5, 0.75)
GRID = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


TARGET_FLAGS = ("dataset", "max_width", "min_width", "train_stride", "train_min_width")
HYPER_FLAGS = ("hidden", "layers", "residual_init", "frequencies", "centred", "sizes", "grid")
TRAIN_FLAGS = (
    "seed", "batch_size", "pretrain_epochs", "warm_steps", "steps", "warm_lr", "lr", "samples", "permute",
    "accumulation", "kd_weight", "fixed_lr", "sandwich", "noise_inverse", "recon_weight", "quadrature", "slim_epochs",
    "noise_end", "full_noise_smallest",
)  # fmt: skip


def _recipe(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, Any]:
    """The run's configs, its data set and its network, checked (InputError, one line) before any training."""
    from neumeta_core import data
    from neumeta_core.config import presets
    from neumeta_core.structure import kernel_size
    from neumeta_core.train import network

    target, hyper, cfg = presets(args.model)
    target = replace(target, **{k: getattr(args, k) for k in TARGET_FLAGS if getattr(args, k) is not None})
    if args.held_out is not None:  # stored as a tuple, largest first, each width once
        target = replace(target, held_out=tuple(sorted(set(args.held_out), reverse=True)))
    if args.generate is not None:
        target = replace(target, generate=tuple(p for p in args.generate.split(",") if p))
    if not 1 <= target.min_width <= target.train_min_width <= target.max_width:
        raise InputError(
            f"widths must satisfy 1 <= --min-width ({target.min_width}) <= --train-min-width "
            f"({target.train_min_width}) <= --max-width ({target.max_width})"
        )
    outside = [h for h in target.held_out if not target.train_min_width < h < target.max_width]
    if outside:
        raise InputError(
            f"--held-out {' '.join(map(str, outside))}: a held-out width must lie strictly between --train-min-width "
            f"({target.train_min_width}) and --max-width ({target.max_width}), the widths training always draws"
        )
    overrides = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    if args.noise is not None:
        overrides["coord_noise"] = args.noise
    cfg = replace(cfg, **overrides)
    if cfg.batch_size % args.nproc:
        raise InputError(
            f"--batch-size {cfg.batch_size} does not split into {args.nproc} equal shards: give a multiple of "
            f"{args.nproc} (the batch is the global one, each process takes its share)"
        )
    split = data.load(target.dataset, args.data_dir)
    net = network(target, split.input_shape, split.classes)  # refused here, before any training
    hyper = replace(hyper, **{k: getattr(args, k) for k in HYPER_FLAGS if getattr(args, k) is not None})
    hyper = replace(hyper, output_dim=max(hyper.output_dim, kernel_size(net.structure, target.max_width)))
    return target, hyper, cfg, split, net


def _train(args: argparse.Namespace) -> int:
    import torch

    from neumeta_core import checkpoint, distributed
    from neumeta_core.sampling import ratio_for
    from neumeta_core.train import evaluate, fit

    if distributed.launched():  # under torchrun: its process count
        args.nproc = int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but no CUDA device is available (--device auto uses the CPU then)")
    target, hyper, cfg, split, net = _recipe(args)
    from neumeta_core import baselines
    from neumeta_core.progress import Progress
    from neumeta_core.resume import Resumable, state_path

    teacher, note, cached = None, "", False
    record: dict[str, Any] = {}
    identity = {
        "target": target.to_dict(),
        "hyper": hyper.to_dict(),
        "train": cfg.to_dict(),
        "data": baselines.data_digest(split),
        "builder": baselines.source_digest(target.model),
        "device": device,
    }
    borrowed: torch.nn.Module | None = None  # with --teacher-from: that checkpoint's teacher ...
    origin: dict[str, Any] = {}  # ... and where it came from
    if args.teacher_from is not None:  # refused here, before anything is printed or started, where it does not fit
        borrowed, origin = baselines.teacher_from(args.teacher_from, target)
        identity["teacher_from"] = origin["from"]
    resuming = args.resume or (args.auto_resume and state_path(args.out).exists())
    if args.nproc > 1 and not distributed.launched():
        if resuming:
            Resumable(state_path(args.out), identity, args.save_every, resume=True)  # a bad state: refused here
        return _torchrun(args.nproc, args.argv)
    with distributed.joined(device) as world:
        split = split.to(world.device)  # once: training finds it there
        log = args.log or args.out.with_name(args.out.name + ".log.jsonl")
        progress = Progress(show=world.main, log=log if world.main else None, every=args.log_every, append=resuming)
        with Resumable(state_path(args.out), identity, args.save_every, resuming, world) as resume:  # bad: refused
            if world.main and resume.saved is not None:
                print(
                    f"resuming from {resume.path}: {resume.saved['phase']} step {resume.saved['step']}", file=sys.stderr
                )
            if world.main:
                print(
                    f"training {target.model} on {split.name} {split.input_shape} ({split.classes} classes), "
                    f"{world.device}{f' x {world.size} processes' if world.size > 1 else ''}: "
                    f"{len(net.structure.generated)} tensors generated, {len(net.structure.groups)} channel groups",
                    file=sys.stderr,
                )
            if borrowed is not None:  # an earlier checkpoint's teacher: no pretraining, nothing cached
                teacher, record, cached = borrowed.to(world.device), {"seconds": origin["seconds"]}, True
                note = f", teacher from {args.teacher_from}"
            elif not args.no_cache:  # the teacher is the individual baseline at h_max: trained once per recipe and seed
                runs = baselines.Runs(args.cache or baselines.default_cache())
                teacher, record, cached = baselines.teacher(target, cfg, split, runs, progress, resume, world)
                note = f", teacher {'from' if cached else 'trained in'} {record['seconds']} s, cached in {runs.root}"
            fitted = fit(target, hyper, cfg, split, net, progress, world.device, teacher, resume, world)
            if not world.main:
                return 0
            result = evaluate(fitted, split, progress)
            if teacher is not None:
                result.metadata.update(teacher_seconds=record["seconds"], teacher_cached=cached)
            if borrowed is not None:
                result.metadata["teacher_from"] = origin["from"]
            result.metadata["processes"] = world.size
            digest = checkpoint.save(args.out, result, cfg)
            resume.finish()
        progress.close()
    print(f"teacher accuracy {result.teacher_accuracy:.2f}%  ({result.metadata['train_seconds']} s{note})")
    for width, acc in result.accuracy.items():
        print(f"  h={width:3d}  gamma={ratio_for(width, result.morph.target.max_width):.4g}  acc={acc:.2f}%")
    print(f"wrote {args.out}  sha256 {digest}; its training log: {log}")
    return 0


def _torchrun(nproc: int, argv: list[str]) -> int:
    """`neumeta train --nproc N`: the same command on N processes of this machine, started by torchrun
    (`python -m torch.distributed.run --standalone`), which also stops them all when one fails. SIGTERM and
    SIGINT are passed on, so a stopped run saves its state as a one-process run does."""
    import signal
    import subprocess

    rest, skip = [], False  # without --nproc, which torchrun's own parser would take for --nproc-per-node
    for arg in argv:
        if skip or arg.startswith("--nproc="):
            skip = False
        elif arg == "--nproc":
            skip = True
        else:
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    child = subprocess.Popen([*command, "-m", "service.cli", *rest])

    asked: list[int] = []

    def forward(signum: int, frame: object) -> None:
        asked.append(signum)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code and asked:  # stopped as asked: the status a one-process run gives (143 for SIGTERM, 130 for SIGINT)
        return 128 + asked[0]
    return code if code >= 0 else 128 - code


def _width(args: argparse.Namespace, ckpt: checkpoint.Checkpoint) -> int:
    """The width --width or --ratio asks for, or InputError naming what the checkpoint serves."""
    from neumeta_core.sampling import ratio_for, width_for

    t = ckpt.target
    served = f"widths {t.min_width}..{t.max_width}, ratios 0..{ratio_for(t.min_width, t.max_width):g}"
    width = int(args.width) if args.width is not None else width_for(args.ratio, t.max_width)
    if t.min_width <= width <= t.max_width:
        return width
    if args.width is not None:
        raise InputError(f"--width {args.width} is not served: {served}")
    if 0 <= args.ratio < 1:
        raise InputError(f"--ratio {args.ratio:g} gives width {width}, which is not served: {served}")
    raise InputError(f"--ratio {args.ratio:g} is not served: {served}")


def _sample(args: argparse.Namespace) -> int:
    """The file the service would send for the same request (neumeta_core.files.build), without a server."""
    import torch

    from neumeta_core import checkpoint, files

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ckpt = checkpoint.load(args.checkpoint)
    width = _width(args, ckpt)
    spec = files.spec_for(ckpt, width, args.format, args.dtype, samples=args.samples)
    body = files.build(ckpt, spec).body
    Path(args.out).write_bytes(body)
    sha = hashlib.sha256(body).hexdigest()
    print(f"wrote {args.out}: width {width}, {ckpt.morph.param_count(width)} parameters, {len(body)} bytes")
    print(f"sha256 {sha}  spec {spec.digest}")
    return 0


def _fitted(args: argparse.Namespace, key: str | None) -> dict[str, str]:
    """The size request of the largest model that meets --max-latency-ms (and --max-bytes) on this machine,
    measured here (service/fit.py); the table goes to stdout."""
    from service import fit

    shared = {k: str(v) for k in ("model", "format", "dtype") if (v := getattr(args, k, None)) is not None}
    cache = fit.Measurements(args.latency_cache or fit.default_cache(), fit.machine(args.threads))
    search = fit.Search(args.url, shared, key, args.threads, cache)
    try:
        try:
            best = search.largest(args.max_latency_ms, args.max_bytes)
        finally:
            print(search.table(args.max_latency_ms))
            print(f"{search.measured} measured, {len(search.seen) - search.measured} from the cache ({cache.path})")
    finally:
        search.close()
    print(f"picked width {best.width}: {best.size} bytes, {best.ms:.3f} ms at batch 1 ({args.threads} thread(s))")
    return {**shared, "width": str(best.width)}


def _size_params(args: argparse.Namespace) -> dict[str, str]:
    params = {
        k: str(v)
        for k in ("ratio", "width", "max_params", "max_bytes", "model", "format", "dtype")
        if (v := getattr(args, k, None)) is not None
    }
    return params


def _compare(args: argparse.Namespace) -> int:
    """Hypernetwork against individually trained and L1-pruned networks over a grid of widths."""
    import torch

    from neumeta_core import baselines, checkpoint, data, report
    from neumeta_core.sampling import unseen_widths, width_for

    torch.set_num_threads(1)
    ckpt = checkpoint.load(args.checkpoint)
    t = ckpt.target
    ratios = args.ratios or GRID
    extra = unseen_widths(t) if args.widths is None else args.widths
    widths = sorted({width_for(r, t.max_width) for r in ratios} | set(extra), reverse=True)
    split = data.load(t.dataset, args.data_dir)
    samples = sorted({1, ckpt.morph.samples} | set(args.samples or []))
    seeds = [] if args.no_individual else list(range(args.individual_seeds))
    runs = baselines.Runs(args.cache or baselines.default_cache())
    source = (t.dataset, None if args.data_dir is None else str(args.data_dir))
    rows, times = baselines.compare(
        ckpt, split, widths, samples, seeds, runs=runs, slim=not args.no_slimmable, jobs=args.jobs, source=source
    )
    title = f"{t.name} on {t.dataset}, checkpoint {ckpt.digest[:12]}, trained on widths {t.trained_description()}"
    tv = ckpt.metadata.get("total_variation", {})
    served = range(t.min_width, t.max_width + 1)
    storage = {  # float32 bytes: the one checkpoint against one trained model per width
        "checkpoint_bytes": Path(args.checkpoint).stat().st_size,
        "individual_models_in_table_bytes": 4 * sum(r["params"] for r in rows),
        "individual_models_every_served_width_bytes": 4 * sum(ckpt.morph.param_count(h) for h in served),
        "served_widths": [t.min_width, t.max_width],
        **({"slimmable_bytes": times.pop("slimmable_bytes")} if "slimmable_bytes" in times else {}),
    }
    meta = {"checkpoint": ckpt.digest, "title": title, "total_variation": tv, "storage": storage, "times": times}
    paths = report.write(rows, args.out, "comparison", meta)
    print(report.markdown(rows) + ("\n" + report.total_variation(tv) if tv else ""))
    print(report.storage(storage) + report.times(times))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Held-out accuracy of the served ONNX models, run with onnxruntime."""
    from neumeta_core import checkpoint, data, export, files
    from neumeta_core.sampling import width_for
    from service.client import download

    if args.baselines:
        return _compare(args)
    ckpt = None if args.url else checkpoint.load(args.checkpoint)
    split = data.load(ckpt.target.dataset if ckpt else args.dataset, args.data_dir)
    x, y = split.x_test.numpy(), split.y_test.numpy()
    rows = []
    dtypes = args.dtypes or ["float32"]
    for ratio in args.ratios or RATIOS:
        for dtype in dtypes:
            if ckpt is None:
                asked = {"ratio": f"{ratio}", "dtype": dtype}
                body, headers = download(args.url, asked, os.environ.get("NEUMETA_API_KEY"))
                width, params = int(headers["x-neumeta-width"]), int(headers["x-neumeta-params"])
            else:
                width = width_for(ratio, ckpt.target.max_width)
                ckpt.morph.check_width(width)
                body = files.build(ckpt, files.spec_for(ckpt, width, dtype=dtype)).body
                params = ckpt.morph.param_count(width)
            acc = round(export.accuracy(body, x, y), 2)
            rows.append({"ratio": ratio, "width": width, "params": params, "dtype": dtype, "bytes": len(body)})
            rows[-1]["accuracy"] = acc
    head = " | ".join(f"{d}: accuracy (%), bytes" for d in dtypes)
    print(f"| ratio | width h | parameters | {head} |\n|---|---|---|{'---|' * len(dtypes)}")
    for i in range(0, len(rows), len(dtypes)):
        r, cells = rows[i], " | ".join(f"{q['accuracy']:.2f}, {q['bytes']:,}" for q in rows[i : i + len(dtypes)])
        print(f"| {r['ratio']:g} | {r['width']} | {r['params']:,} | {cells} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from service.server import serve

    return serve(args.host, args.port)


def _api_key(args: argparse.Namespace) -> str | None:
    """--api-key, else the first line of --api-key-file, else NEUMETA_API_KEY."""
    if args.api_key:
        return str(args.api_key)
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--api-key-file {str(args.api_key_file)!r}: cannot read it ({exc})") from None
        if not key or any(c.isspace() for c in key):
            raise InputError(f"--api-key-file {str(args.api_key_file)!r}: give one key, no spaces, on one line")
        return key
    return os.environ.get("NEUMETA_API_KEY")


def _fetch(args: argparse.Namespace) -> int:
    from service.client import fetch, partial

    sizes = [f for f in ("ratio", "width", "max_params") if getattr(args, f) is not None]
    budgets = [f for f in ("max_latency_ms", "max_bytes") if getattr(args, f) is not None]
    if len(sizes) + bool(budgets) != 1:
        raise InputError(
            "give one size (--ratio, --width or --max-params) or budgets (--max-latency-ms and/or --max-bytes)"
        )
    key = _api_key(args)
    params = _size_params(args)
    if args.max_latency_ms is not None:
        params = _fitted(args, key)
    try:
        result = fetch(args.url, params, args.out, key)
    except KeyboardInterrupt:
        part, state = partial(args.out)
        kept = part.stat().st_size if part.exists() and state.exists() else 0
        where = f"{kept:,} bytes are kept in {part}: run the same command again to resume" if kept else "nothing kept"
        print(f"neumeta fetch: interrupted; {where}", file=sys.stderr)
        return 130
    print(f"{result.status}: {result.path} sha256 {result.sha256}")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (and exit status 2) instead of the usage text and the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port: give a number in 1..65535")
    return value


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def positive_number(text: str) -> float:
    """A finite number > 0 (a budget), or one line saying what is valid."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def output(text: str) -> Path:
    """A file to write: its directory must exist (an error now, not a traceback after the work)."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: the directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory: name the file to write")
    return path


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="neumeta", description="NeuMeta Serve: one network, any size")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="pretrain a network and train its hypernetwork",
        description="--model is one of our builders (with its recipe: neumeta_core/builders) or your own "
        "build(width) function; each flag overrides one field of the recipe.",
    )
    t.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"FILE.py:FUNCTION, package.module:FUNCTION or one of {', '.join(BUILDERS)} (default {DEFAULT_MODEL})",
    )
    t.add_argument("--dataset", choices=DATASETS, help="default: the recipe's (digits for your own network)")
    t.add_argument("--data-dir", type=Path, help="where idx, cifar10 and folder data sets are read from")
    t.add_argument("--generate", help="comma-separated modules the hypernetwork generates (default: all that follow h)")
    t.add_argument("--max-width", type=positive, help="h_max: the width the teacher is trained at")
    t.add_argument("--min-width", type=positive, help="the smallest width served")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    t.add_argument("--out", type=output, default=Path("neumeta-checkpoint.pt"))
    t.add_argument("--seed", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--pretrain-epochs", type=int)
    t.add_argument("--warm-steps", type=int, help="warm-start steps (fit to the resampled teacher)")
    t.add_argument("--steps", type=int, help="task-training steps")
    t.add_argument("--warm-lr", type=float)
    t.add_argument("--lr", type=float, help="task-training learning rate")
    t.add_argument("--hidden", type=int, help="hypernetwork MLP width (default: the family's preset)")
    t.add_argument("--layers", type=int, help="hypernetwork MLP depth (linear layers before the output)")
    t.add_argument("--residual-init", type=float, help="initial scale of each residual branch of the hypernetwork")
    t.add_argument("--frequencies", type=int, help="Fourier bands of the coordinate encoding")
    t.add_argument("--centred", action=argparse.BooleanOptionalAction, help="positions at channel cell centres")
    t.add_argument("--sizes", action=argparse.BooleanOptionalAction, help="layer sizes as hypernetwork inputs")
    t.add_argument(
        "--grid",
        action=argparse.BooleanOptionalAction,
        help="a learned full-width tensor per layer, area-resampled to each width, that the MLPs correct",
    )
    t.add_argument(
        "--slim-epochs", type=float, help="> 0: task phase by the sandwich rule with in-place distillation, epochs"
    )
    t.add_argument("--noise", type=float, help="coordinate noise width (1.0 = +-0.5; 0 = none)")
    t.add_argument(
        "--noise-end", type=float, help="noise at the end of the task phase, a fraction of --noise (cosine decay)"
    )
    t.add_argument(
        "--full-noise-smallest",
        action=argparse.BooleanOptionalAction,
        help="the smallest trained width keeps the full noise (--noise-end applies to the others)",
    )
    t.add_argument(
        "--noise-inverse", action=argparse.BooleanOptionalAction, help="training noise shrinks as 1/h above h_min"
    )
    t.add_argument("--samples", type=int, help="K weight sets averaged at inference")
    t.add_argument("--quadrature", choices=["random", "lattice"], help="where the K weight sets lie")
    t.add_argument("--permute", choices=["all", "hidden", "none"], help="channel groups smoothed")
    t.add_argument("--accumulation", type=int, help="batches per step (h_max first)")
    t.add_argument(
        "--sandwich",
        action=argparse.BooleanOptionalAction,
        help="with --accumulation: smallest width first, then h_max",
    )
    t.add_argument("--kd-weight", type=float, help="distillation from the teacher (0 = none)")
    t.add_argument("--recon-weight", type=float, help="reconstruction of the teacher at h_max (0 = none)")
    t.add_argument("--train-stride", type=int, help="train on every n-th width only")
    t.add_argument("--train-min-width", type=int, help="smallest width training draws")
    t.add_argument(
        "--held-out", type=int, nargs="+", metavar="H", help="widths of the trained range training never draws"
    )
    t.add_argument("--fixed-lr", type=float, help="train the tensors not generated too, at this learning rate")
    t.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this small model)")
    t.add_argument("--cache", type=Path, help="where the teacher is kept (default ~/.cache/neumeta/baselines)")
    t.add_argument("--no-cache", action="store_true", help="train the teacher again and keep nothing")
    t.add_argument(
        "--teacher-from",
        type=Path,
        metavar="CHECKPOINT",
        help="start from the teacher an earlier checkpoint of the same network was trained from (no pretraining)",
    )
    t.add_argument(
        "--save-every", type=positive, default=500, help="steps between training states (OUT.train-state; default 500)"
    )
    t.add_argument("--resume", action="store_true", help="continue from OUT.train-state, where a run stopped")
    t.add_argument(
        "--auto-resume", action="store_true", help="continue from OUT.train-state when there is one, else start"
    )
    t.add_argument(
        "--nproc", type=positive, default=1, help="processes sharing each batch (data-parallel, started by torchrun)"
    )
    t.add_argument("--log", type=Path, help="the JSON-lines training log (default OUT.log.jsonl)")
    t.add_argument("--log-every", type=positive, default=50, help="steps between reports (log lines, bar figures)")
    t.set_defaults(run=_train)

    for name, helptext, run in (("sample", "write one ONNX model", _sample), ("eval", "accuracy table", _eval)):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--checkpoint", type=Path, default=BUNDLED)
        s.set_defaults(run=run)
    sample = sub.choices["sample"]
    size = sample.add_mutually_exclusive_group(required=True)
    size.add_argument("--ratio", type=float)
    size.add_argument("--width", type=int)
    sample.add_argument("--format", choices=names.FORMATS, default="onnx")
    sample.add_argument("--dtype", choices=names.DTYPES, default="float32")
    sample.add_argument("--samples", type=positive, help="K weight sets averaged (default: the checkpoint's)")
    sample.add_argument("--threads", type=positive, help="torch threads (the file's bytes depend on it)")
    sample.add_argument("-o", "--out", type=output, required=True)
    ev = sub.choices["eval"]
    ev.add_argument("--url", help="evaluate models downloaded from a running service instead")
    ev.add_argument("--data-dir", type=Path, help="where the checkpoint's data set is read from (idx, cifar10, folder)")
    ev.add_argument("--dataset", choices=DATASETS, default="digits", help="with --url: the data set to score on")
    ev.add_argument("--ratios", type=float, nargs="+", help=f"default {RATIOS}; with --baselines {GRID}")
    ev.add_argument("--json", type=Path, help="also write the table as JSON")
    ev.add_argument("--dtypes", nargs="+", choices=names.DTYPES, help="the files' dtypes to score (default float32)")
    ev.add_argument("--baselines", action="store_true", help="compare with individually trained and L1-pruned nets")
    ev.add_argument("--widths", type=int, nargs="*", help="with --baselines: extra widths (default: unseen ones)")
    ev.add_argument("--samples", type=int, nargs="+", help="with --baselines: K values besides 1 and the default")
    ev.add_argument("--no-individual", action="store_true", help="with --baselines: skip the individual nets")
    ev.add_argument(
        "--individual-seeds", type=int, default=3, help="with --baselines: individual nets per width (mean reported)"
    )
    ev.add_argument("--out", type=Path, default=Path("docs/results"), help="with --baselines: output directory")
    ev.add_argument("--no-slimmable", action="store_true", help="with --baselines: skip the slimmable network")
    ev.add_argument(
        "--jobs", type=positive, default=1, help="with --baselines: runs trained at once, one core each (default 1)"
    )
    ev.add_argument(
        "--cache", type=Path, help="with --baselines: where finished runs are kept (default ~/.cache/neumeta/baselines)"
    )

    sv = sub.add_parser("serve", help="run the HTTP service (settings from NEUMETA_* variables)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=port, default=8000)
    sv.set_defaults(run=_serve)

    f = sub.add_parser("fetch", help="download a model: verified, atomic, resumable (key: NEUMETA_API_KEY)")
    f.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    fsize = f.add_mutually_exclusive_group()
    fsize.add_argument("--ratio", type=float)
    fsize.add_argument("--width", type=int)
    fsize.add_argument("--max-params", type=int)
    f.add_argument(
        "--max-bytes", type=positive, help="budget: the largest model whose file takes at most this many bytes"
    )
    f.add_argument(
        "--max-latency-ms",
        type=positive_number,
        help="budget: the largest model that runs one image in at most this many ms here (measured with onnxruntime)",
    )
    f.add_argument("--threads", type=positive, default=1, help="onnxruntime threads to measure with (default 1)")
    f.add_argument("--latency-cache", type=Path, help="measured times (default ~/.cache/neumeta/latency.json)")
    f.add_argument("--api-key", help="bearer key (else --api-key-file, else NEUMETA_API_KEY)")
    f.add_argument("--api-key-file", type=Path, help="a file holding the key on one line")
    f.add_argument("--model")
    f.add_argument("--format", choices=names.FORMATS)
    f.add_argument("--dtype", choices=names.DTYPES)
    f.add_argument("-o", "--out", type=output, required=True)
    f.set_defaults(run=_fetch)
    return p


def main(argv: list[str] | None = None) -> int:
    """Bad input is one line on stderr and exit status 2, Ctrl-C 130; a bug keeps its traceback."""
    from service.client import FetchError
    from service.config import SettingsError

    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.run(args))
    except (InputError, SettingsError, FetchError) as exc:
        print(f"neumeta {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"neumeta {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
