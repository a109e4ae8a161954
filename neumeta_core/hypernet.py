"""The implicit network: coordinates of a weight -> its value (method notes section 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from neumeta_core.config import HyperNetConfig
from neumeta_core.coords import encoded_dim, fourier, normalise, raw_coordinates
from neumeta_core.network import Shape
from neumeta_core.plan import Plan, Stacked, stack, window

PRECISIONS = ("float32", "tf32", "bfloat16")


def set_precision(precision: str) -> None:
    """TF32 for CUDA matmuls on or off, for the whole process: torch's switch is a process-wide flag, so it is
    set once (by the service at start-up), never per call, where two threads could interleave it.
    synthesize() checks that the flag matches the precision it is asked for."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


class ResidualMLP(nn.Module):
    """z = act(W0 x); z = z + s_l act(W_l z) for each layer; y = W_out z."""

    def __init__(self, in_dim: int, cfg: HyperNetConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, cfg.hidden)
        self.hidden = nn.ModuleList(nn.Linear(cfg.hidden, cfg.hidden) for _ in range(cfg.layers - 1))
        self.scales = nn.Parameter(torch.full((cfg.layers - 1,), cfg.residual_init))
        self.out = nn.Linear(cfg.hidden, cfg.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = nn.functional.elu(self.inp(x))
        for scale, layer in zip(self.scales, self.hidden, strict=True):
            z = z + scale * nn.functional.elu(layer(z))
        return self.out(z)


class HyperNetwork(nn.Module):
    """One residual MLP per generated tensor, routed by the clean tensor index; with `cfg.grid`, plus a learned
    tensor per generated tensor at its full-width shape (`full_shapes`), resampled to each width (`resampled`)."""

    def __init__(
        self, cfg: HyperNetConfig, num_tensors: int, norm: int, full_shapes: Sequence[Shape] | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = norm
        self.mlps = nn.ModuleList(ResidualMLP(encoded_dim(cfg.frequencies), cfg) for _ in range(num_tensors))
        self.grids = nn.ParameterList()
        if cfg.grid:
            if full_shapes is None or len(full_shapes) != num_tensors:
                raise ValueError(f"a grid hypernetwork needs the full-width shapes of its {num_tensors} tensors")
            self.grids.extend(nn.Parameter(torch.zeros(shape)) for shape in full_shapes)

    def base(
        self, t: int, shape: Shape, jitter: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """Tensor `t`'s grid resampled to `shape` (None without a grid), its cells jittered by `jitter`."""
        return resampled(self.grids[t], shape, jitter, generator) if self.cfg.grid else None

    def _plus_base(
        self, tensor: torch.Tensor, t: int, jitter: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        base = self.base(t, tuple(tensor.shape), jitter, generator)
        return tensor if base is None else tensor + base

    def forward(
        self,
        shapes: Sequence[Shape],
        samples: int = 1,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
        tensors: Sequence[int] | None = None,
        lattice: bool = False,
    ) -> list[torch.Tensor]:
        """Generated tensors in `shapes` order (or those numbered in `tensors`), each the mean of
        `samples` weight sets.

        Sample 0 uses the clean coordinates; samples 1.. add uniform noise of width `noise`
        to all six raw coordinates (training passes samples=1 with noise > 0 instead).
        The noise is drawn on the CPU from `generator`, so every device sees the same values.
        """
        self._check(shapes)
        out = []
        for t in range(len(shapes)) if tensors is None else tensors:
            x = self.encode(shapes, t, samples, noise, generator, lattice)
            # one jittered set of cells in training (samples = 1 with noise); served weights use the exact cells
            jitter = noise if samples == 1 else 0.0
            out.append(self._plus_base(self.assemble(self.mlps[t](x), shapes[t], samples), t, jitter, generator))
        return out

    def _check(self, shapes: Sequence[Shape]) -> None:
        if len(shapes) != len(self.mlps):
            raise ValueError(f"{len(shapes)} shapes for a hypernetwork of {len(self.mlps)} tensors")

    def encode(
        self,
        shapes: Sequence[Shape],
        t: int,
        samples: int,
        noise: float,
        generator: torch.Generator | None,
        lattice: bool = False,
    ) -> torch.Tensor:
        """(K*Q, 6 + 12F) network inputs of tensor `t`: K copies of its coordinates, all but the first
        jittered, normalised and Fourier-encoded, on the hypernetwork's device."""
        raw = self.coordinates(shapes, t, samples, noise, generator, lattice)
        return self.features(raw.to(next(self.parameters()).device))

    @staticmethod
    def coordinates(
        shapes: Sequence[Shape],
        t: int,
        samples: int,
        noise: float,
        generator: torch.Generator | None,
        lattice: bool = False,
    ) -> torch.Tensor:
        """(K*Q, 6) raw coordinates of tensor `t` on the CPU, K copies, all but the first jittered; with
        `lattice` (K > 1), copy k is offset in (o, i) by the k-th point of a rank-1 lattice over the
        noise cell instead: a deterministic quadrature of the cell, no clean copy, no random draws."""
        raw = raw_coordinates(shapes, t)  # (Q, 6)
        reps = raw.expand(samples, *raw.shape)  # (K, Q, 6)
        if lattice and noise > 0 and samples > 1:
            offsets = torch.zeros(samples, 1, 6)
            offsets[:, 0, 1:3] = lattice_points(samples) * noise
            return (reps + offsets).reshape(-1, 6)
        if noise > 0:
            jitter = (torch.rand(reps.shape, generator=generator) - 0.5) * noise
            if samples > 1:
                jitter[0] = 0.0  # the clean sample, as released
            reps = reps + jitter
        return reps.reshape(-1, 6)

    def features(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw coordinates (N, 6) -> normalised and Fourier-encoded network inputs (N, 6 + 12F)."""
        return fourier(normalise(raw, self.norm, self.cfg.centred, self.cfg.sizes), self.cfg.frequencies)

    @torch.no_grad()
    def synthesize(
        self,
        shapes: Sequence[Shape],
        samples: int = 1,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
        precision: str = "float32",
        lattice: bool = False,
        plan: Plan | None = None,
        cache: dict[tuple[int, ...], Stacked] | None = None,
    ) -> list[torch.Tensor]:
        """What forward() returns for every tensor (up to float rounding), run as a `Plan` lays it out: tensors
        of one query grid batched, the first layer separable where the K sets allow, rows in tiles. Nothing
        waits for the device until the caller reads the result. `precision`: "float32", "tf32" (CUDA matmuls in
        TF32) or "bfloat16" (the MLPs' arithmetic in bf16; outputs averaged in float32). `plan`: the same
        arguments' plan, made once and reused (MorphicNet keeps one per width); `cache`: where the stacked
        weights of each group are kept between calls (the caller's, for weights that no longer change: a
        served checkpoint's).
        """
        self._check(shapes)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        device = next(self.parameters()).device
        if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 != (precision == "tf32"):
            raise RuntimeError(f"CUDA matmuls are not set up for {precision}: call set_precision({precision!r}) first")
        plan = plan or Plan(self, shapes, samples, noise, generator, lattice)
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        weights = []
        for group in plan.groups:
            key = (*group.members, dtype.itemsize)
            stacked = None if cache is None else cache.get(key)
            if stacked is None:
                stacked = stack(self, group.members, dtype)
                if cache is not None:
                    cache[key] = stacked
            weights.append(stacked)
        return plan.run(weights, dtype)

    @staticmethod
    def assemble(y: torch.Tensor, shape: Shape, samples: int) -> torch.Tensor:
        """(K*Q, output_dim) network outputs -> the tensor: the mean over the K samples, reshaped."""
        return _to_tensor(y.reshape(samples, -1, y.shape[-1]).mean(dim=0), shape)

    def flops(self, shapes: Sequence[Shape], samples: int) -> int:
        """Multiply-adds x 2 of the MLPs' linear layers for every query of every tensor, K times: the
        work a synthesis cannot avoid (activations, encoding and assembly are not counted)."""
        h, p, o = self.cfg.hidden, encoded_dim(self.cfg.frequencies), self.cfg.output_dim
        per_query = 2 * (p * h + (self.cfg.layers - 1) * h * h + h * o)
        queries = sum(shape[0] * (shape[1] if len(shape) > 1 else 1) for shape in shapes)
        return per_query * queries * samples


def area(n: int, big: int, edges: torch.Tensor | None = None) -> torch.Tensor:
    """(n, big) resampling matrix: row j holds the fraction of cell j of [0, 1) that each of `big` equal cells
    covers, so that each row sums to 1 (the identity at n = big). Cells: n equal ones, or those between `edges`
    (n + 1 increasing values from 0 to 1)."""
    edges_n = torch.arange(n + 1, dtype=torch.float64) / n if edges is None else edges.double()
    edges_b = torch.arange(big + 1, dtype=torch.float64) / big
    lo = torch.maximum(edges_n[:-1, None], edges_b[None, :-1])
    hi = torch.minimum(edges_n[1:, None], edges_b[None, 1:])
    return ((hi - lo).clamp_min(0) / (edges_n[1:] - edges_n[:-1]).clamp_min(1e-12)[:, None]).float()


def jittered_edges(n: int, jitter: float, generator: torch.Generator | None) -> torch.Tensor:
    """The n + 1 edges of n cells of [0, 1), the inner ones moved by uniform noise of width `jitter` cells (1.0:
    +-half a cell, the coordinate noise of NeuMeta applied to where each channel's cell lies), still increasing."""
    edges = torch.arange(n + 1, dtype=torch.float64) / n
    noise = (torch.rand(n - 1, generator=generator, dtype=torch.float64) - 0.5) * min(jitter, 1.0) / n
    edges[1:-1] += noise
    return edges


def resampled(
    tensor: torch.Tensor, shape: Shape, jitter: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`tensor` at `shape` by area averaging along every axis whose size differs: each of the n channels is the
    mean of the channels its cell of [0, 1) covers, a piecewise-constant weight function integrated over the cell
    (continuous in n); along axis 1 (a fan-in) times the cell's share of the big axis, so the sum over inputs keeps
    its size. `jitter` > 0 (training): the cells' inner edges moved at random (`jittered_edges`)."""
    if len(shape) != tensor.dim():
        raise ValueError(f"cannot resample a tensor of shape {tuple(tensor.shape)} to {tuple(shape)}")
    for axis, n in enumerate(shape):
        big = tensor.shape[axis]
        if n == big:
            continue
        edges = jittered_edges(n, jitter, generator) if jitter > 0 else torch.arange(n + 1, dtype=torch.float64) / n
        mix = area(n, big, edges)
        if axis == 1:
            mix = mix * ((edges[1:] - edges[:-1]) * big).float()[:, None]
        mix = mix.to(tensor.device, tensor.dtype)
        tensor = torch.movedim(torch.tensordot(mix, torch.movedim(tensor, axis, 0), dims=1), 0, axis)
    return tensor


def lattice_points(k: int) -> torch.Tensor:
    """(k, 2) points of a Fibonacci-like rank-1 lattice in [-1/2, 1/2)^2: ((j + 1/2)/k, frac((j g + 1/2)/k))
    - 1/2 with g the integer nearest k/phi that is coprime with k. Evenly spread in both directions."""
    g = max(1, round(k / ((1 + 5**0.5) / 2)))
    while math.gcd(g, k) != 1:
        g += 1
    j = torch.arange(k, dtype=torch.float32)
    return torch.stack([(j + 0.5) / k, torch.frac((j * g + 0.5) / k)], dim=1) - 0.5


def _to_tensor(y: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Per-query outputs -> the tensor: a conv takes the k*k middle entries; others entry 0.

    The result is divided by the input-channel count S1 (1 for a bias), so weights scale
    with 1/fan-in as the width changes (notes section 1, output scaling).
    """
    start, kernel = window(shape, y.shape[1])
    s1 = shape[1] if len(shape) > 1 else 1
    return y[:, start : start + kernel].reshape(shape) / s1
