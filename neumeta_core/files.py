"""A served file and everything its bytes depend on: the spec, the one function that builds it.

`FileSpec` names every input that can change a file's bytes: the checkpoint's digest, the width, the
format and dtype, the K weight sets and where they lie, the hypernetwork's arithmetic precision, the
engine that does the arithmetic, and the exporter's version. Its digest is the cache key, and the spec is
written into the file's metadata, so a file says what made it. `build` is what both `neumeta sample` and
the service run: equal specs give equal bytes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property

import numpy as np
import onnx
import torch

from neumeta_core import export
from neumeta_core.checkpoint import Checkpoint
from neumeta_core.errors import InputError
from neumeta_core.sampling import ratio_for


def engine(device: torch.device) -> str:
    """What the arithmetic of a synthesis depends on besides its inputs: float results differ between torch
    releases, CPU instruction sets and thread counts (measured: 2 and 4 threads give different bits on this
    CPU's matmuls), and between GPU architectures. Part of every spec, so that replicas whose arithmetic
    differs never share a cache entry."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        where = f"cuda sm{major}{minor}"
    else:
        where = f"cpu {torch.backends.cpu.get_cpu_capability()} {torch.get_num_threads()} threads"
    return f"torch {torch.__version__}, onnx {onnx.__version__}, {where}"


@dataclass(frozen=True)
class FileSpec:
    """Everything a served file's bytes depend on. Equal specs give equal bytes; `digest` is the cache key."""

    checkpoint: str  # sha256 of the checkpoint file
    width: int
    format: str  # onnx | safetensors
    dtype: str  # float32 | float16 | int8 (ONNX only)
    samples: int  # K weight sets averaged
    quadrature: str  # where the K sets lie: random (seeded) or lattice
    precision: str  # of the hypernetwork's arithmetic: float32 | tf32 | bfloat16
    engine: str  # engine(device) of the process that builds it
    exporter: str = field(default=export.VERSION)

    def __post_init__(self) -> None:
        if self.format not in export.FORMATS:
            raise InputError(f"format must be one of {' | '.join(export.FORMATS)}, not {self.format!r}")
        if self.dtype not in export.DTYPES:
            raise InputError(f"dtype must be one of {' | '.join(export.DTYPES)}, not {self.dtype!r}")
        if self.dtype in export.QUANTIZED and self.format != "onnx":
            raise InputError(f"dtype {self.dtype} is served as onnx only (quantised QDQ), not as {self.format}")

    @cached_property
    def canonical(self) -> str:
        """The spec as sorted, compact JSON: the same text in every process."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical.encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str | bytes) -> FileSpec:
        """A spec from its canonical JSON (a cache record's header); ValueError for anything else."""
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError("not a file spec")
        return cls(**data)


def spec_for(
    ckpt: Checkpoint,
    width: int,
    fmt: str = "onnx",
    dtype: str = "float32",
    precision: str = "float32",
    samples: int | None = None,
    device: torch.device | None = None,
) -> FileSpec:
    """The spec of the file this process would build from `ckpt` (K: the checkpoint's own unless given)."""
    return FileSpec(
        checkpoint=ckpt.digest,
        width=width,
        format=fmt,
        dtype=dtype,
        samples=ckpt.morph.samples if samples is None else samples,
        quadrature=ckpt.train.quadrature,
        precision=precision,
        engine=engine(device or ckpt.morph.device),
    )


def metadata(spec: FileSpec, ckpt: Checkpoint) -> dict[str, str]:
    """What the file says about itself: the spec whole (`neumeta.spec`) and field by field, the ratio, and what
    the network reads and says: the model, its data set, the input it takes and its class labels (JSON)."""
    meta = {f"neumeta.{k}": str(v) for k, v in asdict(spec).items()}
    meta["neumeta.spec"] = spec.canonical
    meta["neumeta.ratio"] = f"{ratio_for(spec.width, ckpt.target.max_width):g}"
    meta["neumeta.model"] = ckpt.name
    meta["neumeta.dataset"] = ckpt.data.name
    shape: list[int | str] = ["batch", *ckpt.data.input_shape]
    meta["neumeta.input"] = json.dumps({"name": "input", "dtype": "float32", "shape": shape})
    meta["neumeta.labels"] = json.dumps(list(ckpt.data.labels))
    return meta


class ExportMismatch(RuntimeError):
    """The exported file does not compute what the torch model computes (a bug, never a user's error)."""


@dataclass(frozen=True)
class Built:
    body: bytes
    seconds: dict[str, float]  # per stage: synthesize, export, verify


def build(ckpt: Checkpoint, spec: FileSpec, probe: torch.Tensor | None = None) -> Built:
    """Synthesize the weights `spec` names, fill them into the checkpoint's graph at that width with the spec
    in the metadata, and verify the file (`verify`)."""
    if spec.checkpoint != ckpt.digest or spec.engine != engine(ckpt.morph.device):
        raise ValueError("this spec names another checkpoint or engine: this process cannot build its bytes")
    if spec.quadrature != ckpt.train.quadrature:
        raise ValueError(f"the checkpoint's K sets lie on {ckpt.train.quadrature!r}, not {spec.quadrature!r}")
    started = time.perf_counter()
    state = ckpt.morph.state_dict(spec.width, spec.precision, spec.samples)
    synthesized = time.perf_counter()
    weights = export.served(ckpt.graph(spec.width), state)  # folded once: the file and its check use them
    graph, meta, probe = ckpt.graph(spec.width), metadata(spec, ckpt), ckpt.probe() if probe is None else probe
    if spec.dtype in export.QUANTIZED:  # the float32 file, verified as ever, then quantised and checked against it
        images = calibration_images(ckpt)
        float_body = export.serialize(graph, weights, spec.format, "float32", meta)
        verify(ckpt, replace(spec, dtype="float32"), float_body, weights, probe)
        body = export.quantize(float_body, images)
        exported = time.perf_counter()
        agreed = export.agreement(float_body, body, np.concatenate([probe.cpu().numpy(), images]))
        if agreed < INT8_AGREEMENT:
            raise ExportMismatch(f"the int8 file agrees with the float32 file on {agreed:.1%} of the check images")
    else:
        body = export.serialize(graph, weights, spec.format, spec.dtype, meta)
        exported = time.perf_counter()
        verify(ckpt, spec, body, weights, probe)
    seconds = {"synthesize": synthesized - started, "export": exported - synthesized}
    seconds["verify"] = time.perf_counter() - exported
    return Built(body, seconds)


# an int8 file's top-1 class must be its float32 file's on this share of the check images (the probe batch and
# the checkpoint's calibration images); the bundles' int8 files lose at most 0.13 points of held-out accuracy
# (bench/dtypes.py, docs/results/fashion_mnist/dtypes.md)
INT8_AGREEMENT = 0.95


def calibration_images(ckpt: Checkpoint) -> np.ndarray:
    """The real images an int8 file is calibrated on: those the checkpoint keeps for its BatchNorm statistics."""
    if ckpt.calibration is None:
        raise InputError(f"{ckpt.name} holds no calibration images, which int8 needs: ask for float32 or float16")
    return ckpt.calibration.detach().cpu().numpy().astype(np.float32)


# the probe images a file is checked on before it is served: 2 of the checkpoint's 8 random images, in a session
# with onnxruntime's basic graph optimisations only; 0.5 ms at h = 8 and 1.0 ms at h = 32 of the Fashion bundle, where
# 8 images in a fully optimised session took 1.2 and 2.4 (bench/cold_synthesis.py). A weight out of place moves
# the logits of any random image.
VERIFY_IMAGES = 2

FLOAT16_TOLERANCE = 2e-2  # a float16 file against the float32 reference: rounding moves logits ~1e-3


def size(ckpt: Checkpoint, spec: FileSpec) -> int:
    """The length in bytes of the file `spec` names, without synthesising it: the same graph, metadata and
    format filled with zeros in place of the generated tensors (every format stores a tensor in a number of
    bytes fixed by its shape and dtype, so the values do not change the length)."""
    shapes = ckpt.morph.shapes(spec.width)
    state = {**ckpt.morph.fixed, **ckpt.morph.stats(spec.width, spec.samples)}
    state |= {name: torch.zeros(shape) for name, shape in shapes.items()}
    graph = ckpt.graph(spec.width)
    images = calibration_images(ckpt)[:1] if spec.dtype in export.QUANTIZED else None
    weights = export.served(graph, state)
    return len(export.serialize(graph, weights, spec.format, spec.dtype, metadata(spec, ckpt), images))


def verify(ckpt: Checkpoint, spec: FileSpec, body: bytes, weights: export.Weights, probe: torch.Tensor) -> None:
    """ExportMismatch unless the file computes what build(width) computed at training time: onnxruntime's
    logits on the probe against the reference logits the checkpoint holds for this width and K (K = 1 and
    the checkpoint's own, float32 arithmetic; float16 files to FLOAT16_TOLERANCE). A float32 file is read back
    and must hold exactly the graph and `weights`; its logits come from the graph's session made at load, fed
    the weights read from the file (export.run_filled); other files get a session of their own. Files with another K or
    arithmetic have no reference: their weights are read back and compared exactly with `weights` (the served
    tensors), and their logits must be finite. Safetensors files are read back and compared."""
    if spec.format == "safetensors":
        error = export.verify_safetensors(body, weights, spec.dtype)
        tolerance = export.TOLERANCE
    else:
        stored = ckpt.reference.get(spec.samples, {}) if spec.precision == "float32" else {}
        reference = stored.get(spec.width)
        images = probe[:VERIFY_IMAGES].cpu().numpy()
        if spec.dtype == "float32":  # the graph's session made at load, on the weights read back from the file
            found = export.run_filled(ckpt.graph(spec.width), body, weights, images)
            if found is None:
                raise ExportMismatch(f"the exported {spec.format} file does not hold the graph and the weights")
            logits = found
        else:
            logits = export.session(body, optimise=False).run([export.OUTPUT], {export.INPUT: images})[0]
        if reference is not None and len(reference) >= len(logits):
            reference = reference[: len(logits)]
            error = export.relative(logits, reference)
            tolerance = FLOAT16_TOLERANCE if spec.dtype == "float16" else export.TOLERANCE
        else:
            error = export.verify_weights(body, weights, spec.dtype)
            error = error if np.isfinite(logits).all() else float("inf")
            tolerance = 0.0
    if not error <= tolerance:  # NaN fails too
        raise ExportMismatch(f"the exported {spec.format} file differs from torch by {error:.2e} (relative)")
