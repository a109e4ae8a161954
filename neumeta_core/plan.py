"""A synthesis laid out once per width: what HyperNetwork.synthesize runs (method notes section 2).

- **Groups.** Tensors whose queries form the same S0 x S1 grid run their MLPs together as batched matmuls, so a
  synthesis launches a few kernels per layer, not a few per tensor.
- **A separable first layer.** Where the K weight sets differ only by one offset per set (a lattice over the noise
  cell, or no noise), the first layer of a query is a sum of a term in o and a term in i: the Fourier encoding acts
  on each coordinate alone, so W0 enc(o, i) = W0 enc(o, 0) + W0 (enc(0, i) - enc(0, 0)). It costs S0 + S1 rows of
  each set instead of S0 * S1, then one broadcast add.
- **Tiles.** The rows go through every layer a tile at a time, so a tile's activations stay in the CPU's cache
  between layers (one tile of everything on CUDA).
- **ELU(x) = max(x, exp(min(x, 0)) - 1)**, equal to x for x > 0 and e^x - 1 below, since e^x - 1 >= x: torch's ELU
  takes expm1, which on this CPU costs 6x exp (bench/cold_synthesis.py's notes). The difference is float rounding
  (6e-8 absolute at most).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from neumeta_core.hypernet import HyperNetwork
from neumeta_core.network import Shape
from neumeta_core.numerics import warm

warm()  # before any vectorised exp, sin or cos: neumeta_core/numerics.py

TILE = 4096  # rows per tile on the CPU: 2 MB of activations at 128 hidden units (bench/cold_synthesis.py)


def grid(shape: Shape) -> tuple[int, int]:
    """The S0 x S1 queries of a tensor: one per (output, input) channel pair; S1 = 1 for a vector."""
    return shape[0], shape[1] if len(shape) > 1 else 1


def separable(samples: int, noise: float, lattice: bool) -> bool:
    """Whether every weight set's coordinates differ from the clean ones by one offset per set: no noise, or the
    K sets on a lattice. Random noise (training's, or served K > 1 sets drawn at random) moves every query alone."""
    return noise == 0 or (lattice and samples > 1)


@dataclass(frozen=True)
class Group:
    """Tensors `members` with one query grid: their encoded inputs, (G, rows, P) each. Separable: the rows at
    i = 0 (G, K*S0, P) and the i rows less the (0, 0) row of their set (G, K*S1, P); dense: every query
    (G, K*S0*S1, P), rows in (k, o, i) order."""

    members: tuple[int, ...]
    s0: int
    s1: int
    inputs: tuple[torch.Tensor, ...]

    @property
    def separable(self) -> bool:
        return len(self.inputs) == 2


@dataclass(frozen=True)
class Piece:
    """Rows [k0, k1) x [o0, o1) x all i of every member of group `group` (whole sets, or a run of o in one set, so
    that the rows are contiguous), at row `at` of the tile."""

    group: int
    k0: int
    k1: int
    o0: int
    o1: int
    at: int


@dataclass(frozen=True)
class Stacked:
    """The MLP weights of a group's members, stacked for batched matmuls: per layer (G, in, out) and (G, 1, out);
    the residual scales per hidden layer, (G, 1, 1), and as numbers where G = 1."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    scales: list[torch.Tensor]
    scalars: list[float]


def stack(hyper: HyperNetwork, members: Sequence[int], dtype: torch.dtype) -> Stacked:
    from neumeta_core.hypernet import ResidualMLP

    mlps = [cast(ResidualMLP, hyper.mlps[t]) for t in members]
    per_layer = [[m.inp for m in mlps]]
    per_layer += [[cast(nn.Linear, m.hidden[i]) for m in mlps] for i in range(len(mlps[0].hidden))]
    per_layer += [[m.out for m in mlps]]
    layers = [
        (
            torch.stack([x.weight for x in linears]).transpose(1, 2).to(dtype),
            torch.stack([x.bias for x in linears])[:, None, :].to(dtype),
        )
        for linears in per_layer
    ]
    scales = torch.stack([m.scales for m in mlps]).to(dtype).T[:, :, None, None]  # (L - 1, G, 1, 1)
    return Stacked(layers, list(scales), [float(s) for s in mlps[0].scales] if len(mlps) == 1 else [])


class Plan:
    """One width's synthesis: the groups, their inputs, the tiles the rows run in, and the grid's part of each
    tensor (resampled from the hypernetwork's grids when the plan is made: a plan is for weights that no longer
    change, or for one call)."""

    def __init__(
        self,
        hyper: HyperNetwork,
        shapes: Sequence[Shape],
        samples: int,
        noise: float,
        generator: torch.Generator | None,
        lattice: bool,
        tile: int | None = None,
    ) -> None:
        self.shapes = list(shapes)
        self.samples = samples
        device = next(hyper.parameters()).device
        split = separable(samples, noise, lattice)
        grids: dict[tuple[int, int], list[int]] = {}
        for t, shape in enumerate(shapes):
            grids.setdefault(grid(shape), []).append(t)
        raw = [hyper.coordinates(shapes, t, samples, noise, generator, lattice) for t in range(len(shapes))]
        self.groups = []
        for (s0, s1), members in grids.items():
            per_member = [r.view(samples, s0, s1, 6) for r in (raw[t] for t in members)]
            if split:
                o_rows = torch.stack([r[:, :, 0] for r in per_member])  # (G, K, S0, 6)
                i_rows = torch.stack([r[:, 0, :] for r in per_member])  # (G, K, S1, 6)
                origin = torch.stack([r[:, :1, 0] for r in per_member])  # (G, K, 1, 6)
                inputs: tuple[torch.Tensor, ...] = (
                    self._encoded(hyper, o_rows, device),
                    self._encoded(hyper, i_rows, device) - self._encoded(hyper, origin, device),
                )
            else:
                inputs = (self._encoded(hyper, torch.stack(per_member), device),)
            self.groups.append(Group(tuple(members), s0, s1, tuple(x.flatten(1, -2) for x in inputs)))
        self.bases = [hyper.base(t, shape) for t, shape in enumerate(shapes)]  # the grid's part (None without)
        self.tile = tile or (TILE if device.type == "cpu" else sum(len(g.members) * self.rows(g) for g in self.groups))
        self.tiles = self._tiles()
        self.total = sum(len(g.members) * self.rows(g) for g in self.groups)

    @staticmethod
    def _encoded(hyper: HyperNetwork, raw: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Raw coordinates (..., 6) -> encoded inputs (..., P) on `device`."""
        return hyper.features(raw.reshape(-1, 6).to(device)).view(*raw.shape[:-1], -1)

    def rows(self, group: Group) -> int:
        return self.samples * group.s0 * group.s1

    def flops(self, hidden: int, layers: int, outputs: int) -> int:
        """Multiply-adds x 2 of the matmuls a run performs (HyperNetwork.flops counts every query's first layer; a
        separable group's costs K * (S0 + S1) rows here)."""
        total = 0
        for g in self.groups:
            first = sum(x.shape[1] for x in g.inputs) * g.inputs[0].shape[-1] * hidden
            total += len(g.members) * (first + self.rows(g) * ((layers - 1) * hidden * hidden + hidden * outputs))
        return 2 * total

    def nbytes(self) -> int:
        held = [x for g in self.groups for x in g.inputs] + [b for b in self.bases if b is not None]
        return sum(x.numel() * x.element_size() for x in held)

    def _tiles(self) -> list[list[Piece]]:
        """Pieces packed into tiles of at most `self.tile` rows (a piece alone may exceed it: one o of a very wide
        tensor). A group of several members stays whole (they are small: vectors, in the networks we know)."""
        spans: list[tuple[int, int, int, int, int]] = []  # (group, k0, k1, o0, o1)
        for g, group in enumerate(self.groups):
            k, s0, s1 = self.samples, group.s0, group.s1
            if len(group.members) > 1 or self.rows(group) <= self.tile:
                spans.append((g, 0, k, 0, s0))
            elif s0 * s1 <= self.tile:
                step = self.tile // (s0 * s1)
                spans += [(g, k0, min(k, k0 + step), 0, s0) for k0 in range(0, k, step)]
            else:
                step = max(1, self.tile // s1)
                spans += [(g, k0, k0 + 1, o0, min(s0, o0 + step)) for k0 in range(k) for o0 in range(0, s0, step)]
        tiles: list[list[Piece]] = [[]]
        used = 0
        for g, k0, k1, o0, o1 in spans:
            size = len(self.groups[g].members) * (k1 - k0) * (o1 - o0) * self.groups[g].s1
            if used and used + size > self.tile:
                tiles.append([])
                used = 0
            tiles[-1].append(Piece(g, k0, k1, o0, o1, used))
            used += size
        return tiles

    def size(self, piece: Piece) -> tuple[int, int]:
        """(G, rows per member) of a piece."""
        group = self.groups[piece.group]
        return len(group.members), (piece.k1 - piece.k0) * (piece.o1 - piece.o0) * group.s1

    def first(self, piece: Piece) -> int:
        """The piece's first row within each member's K*S0*S1 rows."""
        group = self.groups[piece.group]
        return (piece.k0 * group.s0 + piece.o0) * group.s1

    def run(self, weights: Sequence[Stacked], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """The MLPs' outputs of every tensor, averaged over the K sets: (S0*S1, output_dim) each, float32, in
        tensor order. `weights`: stack(hyper, group.members) per group."""
        device = self.groups[0].inputs[0].device
        hidden, width = weights[0].layers[0][0].shape[-1], weights[0].layers[-1][0].shape[-1]
        rows = max(sum(math.prod(self.size(p)) for p in tile) for tile in self.tiles)
        z, u, m, y = _scratch(device, dtype, (rows, hidden), (rows, hidden), (rows, hidden), (self.total, width))
        firsts = [self._first_terms(group, w) for group, w in zip(self.groups, weights, strict=True)]
        outputs, at = [], 0
        for g in self.groups:
            outputs.append(y[at : at + len(g.members) * self.rows(g)].view(len(g.members), self.rows(g), width))
            at += len(g.members) * self.rows(g)
        for tile in self.tiles:
            n = sum(math.prod(self.size(p)) for p in tile)
            for piece in tile:
                self._first_layer(piece, firsts[piece.group], weights[piece.group], z)
            _elu(z[:n], m[:n])
            for layer in range(1, len(weights[0].layers) - 1):
                for piece in tile:
                    w, b = weights[piece.group].layers[layer]
                    _linear(self._rows(z, piece), w, b, self._rows(u, piece))
                _elu(u[:n], m[:n])
                for piece in tile:  # the residual: z + s ELU(u)
                    stacked = weights[piece.group]
                    if stacked.scalars:
                        self._rows(z, piece).add_(self._rows(u, piece), alpha=stacked.scalars[layer - 1])
                    else:
                        self._rows(z, piece).addcmul_(self._rows(u, piece), stacked.scales[layer - 1])
            for piece in tile:
                w, b = weights[piece.group].layers[-1]
                start = self.first(piece)
                _linear(self._rows(z, piece), w, b, outputs[piece.group][:, start : start + self.size(piece)[1]])
        means = [y.view(y.shape[0], self.samples, -1, y.shape[-1]).mean(dim=1).float() for y in outputs]
        out: list[torch.Tensor | None] = [None] * len(self.shapes)
        for group, mean in zip(self.groups, means, strict=True):
            for j, t in enumerate(group.members):
                out[t] = mean[j]
        return [t for t in out if t is not None]

    def with_base(self, t: int, tensor: torch.Tensor) -> torch.Tensor:
        """Tensor `t` of the MLPs (a new tensor) plus its grid's part, in place."""
        base = self.bases[t]
        return tensor if base is None else tensor.add_(base)

    def _rows(self, buffer: torch.Tensor, piece: Piece) -> torch.Tensor:
        """A piece's rows of a tile buffer: (G, rows, width)."""
        g, rows = self.size(piece)
        return buffer[piece.at : piece.at + g * rows].view(g, rows, buffer.shape[-1])

    def _first_terms(self, group: Group, weights: Stacked) -> tuple[torch.Tensor, ...]:
        """Separable: the first layer's o term with the bias (G, K, S0, 1, H) and i term (G, K, 1, S1, H)."""
        if not group.separable:
            return ()
        w, b = weights.layers[0]
        g, k = len(group.members), self.samples
        o_term = torch.baddbmm(b, group.inputs[0].to(w.dtype), w).view(g, k, group.s0, 1, -1)
        i_term = torch.bmm(group.inputs[1].to(w.dtype), w).view(g, k, 1, group.s1, -1)
        return o_term, i_term

    def _first_layer(self, piece: Piece, terms: tuple[torch.Tensor, ...], weights: Stacked, z: torch.Tensor) -> None:
        group = self.groups[piece.group]
        out = self._rows(z, piece)
        if terms:
            o_term, i_term = terms
            k0, k1, o0, o1 = piece.k0, piece.k1, piece.o0, piece.o1
            shape = (out.shape[0], k1 - k0, o1 - o0, group.s1, out.shape[-1])
            torch.add(o_term[:, k0:k1, o0:o1], i_term[:, k0:k1], out=out.view(shape))
        else:
            w, b = weights.layers[0]
            start = self.first(piece)
            _linear(group.inputs[0][:, start : start + out.shape[1]].to(w.dtype), w, b, out)


_local = threading.local()


def _scratch(device: torch.device, dtype: torch.dtype, *shapes: tuple[int, int]) -> list[torch.Tensor]:
    """Work buffers of `shapes`, this thread's and reused by every run on it: fresh ones of megabytes cost page
    faults on first touch (measured: 30-50 % more time in the first pass over them)."""
    pool: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = _local.__dict__.setdefault("pool", {})
    out = []
    for n, (rows, cols) in enumerate(shapes):
        key = (device, dtype, n)
        buffer = pool.get(key)
        if buffer is None or buffer.numel() < rows * cols:
            buffer = pool[key] = torch.empty(rows * cols, dtype=dtype, device=device)
        out.append(buffer[: rows * cols].view(rows, cols))
    return out


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """out = x @ w + b for (G, R, in) inputs; one member's as a plain matmul (faster than a batch of one)."""
    if x.shape[0] == 1:
        torch.addmm(b[0], x[0], w[0], out=out[0])
    else:
        torch.baddbmm(b, x, w, out=out)


def _elu(x: torch.Tensor, scratch: torch.Tensor) -> None:
    """x = ELU(x) in place, as max(x, exp(min(x, 0)) - 1) (see the module's notes)."""
    torch.clamp_max(x, 0, out=scratch)
    scratch.exp_().sub_(1)
    torch.maximum(x, scratch, out=x)
