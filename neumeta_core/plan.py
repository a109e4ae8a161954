"""A synthesis laid out once per width: what HyperNetwork.synthesize runs (method notes section 2).

- **Groups.** Tensors whose queries form the same S0 x S1 grid run their MLPs together as batched matmuls, so a
  synthesis launches a few kernels per layer, not a few per tensor.
- **A separable first layer.** Where the K weight sets differ only by one offset per set (a lattice over the noise
  cell, or no noise), the first layer of a query is a sum of a term in o and a term in i: the Fourier encoding acts
  on each coordinate alone, so W0 enc(o, i) = W0 enc(o, 0) + W0 (enc(0, i) - enc(0, 0)). It costs S0 + S1 rows of
  each set instead of S0 * S1, then one broadcast add; a vector (S1 = 1) is its own o term, so its rows go through
  the first layer as they are.
- **Tiles.** The rows go through every layer a tile at a time, so a tile's activations stay in the CPU's cache
  between layers (one tile of everything on CUDA).
- **The mean over the K sets before the last layer.** That layer is affine, so the mean of its outputs is its output
  on the mean: the rows of a (piece, member) are summed over K first and one matmul per piece maps them, its input
  the grid's part plus the bias and its scale 1 / (K S1) (the mean and the fan-in scaling, `_to_tensor`), so the
  tensor comes out whole, with no pass per tensor after the MLPs.
- **ELU(x) = max(x, 2^(min(x, 0) log2 e) - 1)**, equal to x for x > 0 and e^x - 1 below, since e^x - 1 >= x: torch's
  ELU takes expm1, which cost 6x exp on an AVX-512 Intel CPU, and on an AMD EPYC exp costs 4.7x exp2 (0.27 against
  0.058 ms for 3,784 x 128 values on one thread; the whole ELU 0.36 against 0.17 ms; bench/elu.py). The difference
  is float rounding (6e-8 absolute at most).
"""

from __future__ import annotations

import itertools
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

LOG2E = 1.0 / math.log(2.0)
TILE = 4096  # rows per tile on the CPU: 2 MB of activations at 128 hidden units (bench/cold_synthesis.py)


def grid(shape: Shape) -> tuple[int, int]:
    """The S0 x S1 queries of a tensor: one per (output, input) channel pair; S1 = 1 for a vector."""
    return shape[0], shape[1] if len(shape) > 1 else 1


def window(shape: Shape, outputs: int) -> tuple[int, int]:
    """(start, count): the columns of an MLP's `outputs` that hold a query's entries of a tensor of `shape` (a conv
    takes the k*k middle ones, other tensors column 0)."""
    kernel = math.prod(shape[2:]) if len(shape) > 2 else 1
    return (outputs // 2 - kernel // 2 if len(shape) > 2 else 0), kernel


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
    the residual scales per hidden layer, (G, 1, 1), and as numbers where G = 1. A group of one member holds plain
    matrices, (in, out) and (out,), for plain matmuls (faster than a batch of one, and no view to take per call)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    scales: list[torch.Tensor]
    scalars: list[float]
    last: torch.Tensor  # the last layer's weights (G, hidden, out), float32 whatever the MLPs' arithmetic


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
    last = torch.stack([m.out.weight for m in mlps]).transpose(1, 2).float()
    if len(mlps) > 1:
        return Stacked(layers, list(scales), [], last)
    return Stacked([(w[0], b[0, 0]) for w, b in layers], list(scales), [float(s) for s in mlps[0].scales], last[0])


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
            if split and s0 > 1 and s1 > 1:  # a vector (or one row) is its own o (or i) term: no add
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
        self.starts = [self._start(hyper, group, device) for group in self.groups]
        self.tile = tile or (TILE if device.type == "cpu" else sum(len(g.members) * self.rows(g) for g in self.groups))
        self.tiles = self._tiles()
        # what a run reads, as it reads it: a one-member group's inputs and start as matrices (views made here, once)
        self.inputs = [tuple(x[0] if len(g.members) == 1 else x for x in g.inputs) for g in self.groups]
        self.heads = [x[0] if len(g.members) == 1 else x for g, x in zip(self.groups, self.starts, strict=True)]
        self.offsets = list(itertools.accumulate((x.numel() for x in self.starts), initial=0))
        self.places = self._places(hyper.cfg.output_dim)

    def _start(self, hyper: HyperNetwork, group: Group, device: torch.device) -> torch.Tensor:
        """What a group's last layer adds to its summed rows: (G, S0*S1, out) float32, each member's grid part
        (resampled to its shape, in the query layout) plus the last layer's bias over S1."""
        from neumeta_core.hypernet import ResidualMLP

        rows = []
        with torch.no_grad():
            for t in group.members:
                shape, out = self.shapes[t], hyper.cfg.output_dim
                bias = cast(ResidualMLP, hyper.mlps[t]).out.bias.float() / group.s1
                start = bias.expand(group.s0 * group.s1, out).clone()
                base = hyper.base(t, shape)
                if base is not None:
                    lo, kernel = window(shape, out)
                    start[:, lo : lo + kernel] += base.float().reshape(-1, kernel)
                rows.append(start)
        return torch.stack(rows).to(device)

    def _places(self, outputs: int) -> list[tuple[Shape, tuple[int, ...], int]]:
        """Where each tensor lies in a run's output buffer (the groups' (G, S0*S1, out) blocks one after another):
        (shape, strides, offset), so that each comes out as one strided view."""
        places: list[tuple[Shape, tuple[int, ...], int]] = [((), (), 0)] * len(self.shapes)
        for g, group in enumerate(self.groups):
            for j, t in enumerate(group.members):
                shape = self.shapes[t]
                lo, _ = window(shape, outputs)
                inner = shape[2:]
                strides = [group.s1 * outputs, outputs][: min(len(shape), 2)]
                strides += [math.prod(inner[d + 1 :]) for d in range(len(inner))]
                places[t] = (shape, tuple(strides), self.offsets[g] + j * group.s0 * group.s1 * outputs + lo)
        return places

    @staticmethod
    def _encoded(hyper: HyperNetwork, raw: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Raw coordinates (..., 6) -> encoded inputs (..., P) on `device`."""
        return hyper.features(raw.reshape(-1, 6).to(device)).view(*raw.shape[:-1], -1)

    def rows(self, group: Group) -> int:
        return self.samples * group.s0 * group.s1

    def flops(self, hidden: int, layers: int, outputs: int) -> int:
        """Multiply-adds x 2 of the matmuls a run performs (HyperNetwork.flops counts every query's first and last
        layer K times; a separable group's first layer costs K * (S0 + S1) rows here, the last S0 * S1)."""
        total = 0
        for g in self.groups:
            first = sum(x.shape[1] for x in g.inputs) * g.inputs[0].shape[-1] * hidden
            last = g.s0 * g.s1 * hidden * outputs
            total += len(g.members) * (first + self.rows(g) * (layers - 1) * hidden * hidden + last)
        return 2 * total

    def nbytes(self) -> int:
        held = [x for g in self.groups for x in g.inputs] + self.starts
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
        """Every tensor, in tensor order and shape: the MLPs' outputs averaged over the K sets, scaled by 1 / S1, plus
        the grid's part; float32. `weights`: stack(hyper, group.members) per group."""
        device = self.groups[0].inputs[0].device
        hidden = weights[0].layers[0][0].shape[-1]
        rows = max(sum(math.prod(self.size(p)) for p in tile) for tile in self.tiles)
        z, u, m = _scratch(device, dtype, (rows, hidden), (rows, hidden), (rows, hidden))
        firsts = [self._first_terms(g, w) for g, w in enumerate(weights)]
        flat = torch.empty(self.offsets[-1], device=device)  # fresh: the caller keeps the tensors
        outputs = [
            flat[a:b].view(x.shape) for a, b, x in zip(self.offsets[:-1], self.offsets[1:], self.heads, strict=True)
        ]
        for tile in self.tiles:
            n = sum(math.prod(self.size(p)) for p in tile)
            zs, us = [self._rows(z, p) for p in tile], [self._rows(u, p) for p in tile]
            stacks = [weights[p.group] for p in tile]
            for piece, zp, stacked in zip(tile, zs, stacks, strict=True):
                self._first_layer(piece, firsts[piece.group], stacked, zp)
            _elu(z[:n], m[:n])
            for layer in range(1, len(weights[0].layers) - 1):
                for zp, up, stacked in zip(zs, us, stacks, strict=True):
                    w, b = stacked.layers[layer]
                    _linear(zp, w, b, up)
                _elu(u[:n], m[:n])
                for zp, up, stacked in zip(zs, us, stacks, strict=True):  # the residual: z + s ELU(u)
                    if stacked.scalars:
                        zp.add_(up, alpha=stacked.scalars[layer - 1])
                    else:
                        zp.addcmul_(up, stacked.scales[layer - 1])
            for piece, zp, stacked in zip(tile, zs, stacks, strict=True):
                self._last_layer(piece, stacked, zp, m, outputs[piece.group])
        return [flat.as_strided(shape, strides, offset) for shape, strides, offset in self.places]

    def _last_layer(
        self, piece: Piece, weights: Stacked, z: torch.Tensor, scratch: torch.Tensor, y: torch.Tensor
    ) -> None:
        """The piece's rows `z` summed over its sets, through the last layer, into its (o, i) rows of the group's
        outputs `y`: from the group's start where the piece holds set 0, added to what earlier sets left otherwise."""
        group = self.groups[piece.group]
        g, k = len(group.members), piece.k1 - piece.k0
        rows = (piece.o1 - piece.o0) * group.s1
        sets = z.view(g, k, rows, -1) if g > 1 else z.view(k, rows, -1)
        axis = 1 if g > 1 else 0
        if z.dtype == torch.float32:
            summed = torch.sum(sets, dim=axis, out=scratch[: g * rows].view(g, rows, -1) if g > 1 else scratch[:rows])
        else:  # the last layer in float32 whatever the MLPs' arithmetic
            summed = sets.sum(dim=axis, dtype=torch.float32)
        alpha = 1.0 / (self.samples * group.s1)
        whole = piece.o0 == 0 and piece.o1 == group.s0
        target = y if whole else y[..., piece.o0 * group.s1 : piece.o0 * group.s1 + rows, :]
        if piece.k0 == 0:
            start = self.heads[piece.group]
            start = start if whole else start[..., piece.o0 * group.s1 : piece.o0 * group.s1 + rows, :]
            (torch.baddbmm if g > 1 else torch.addmm)(start, summed, weights.last, alpha=alpha, out=target)
        elif g > 1:
            target.baddbmm_(summed, weights.last, alpha=alpha)
        else:
            target.addmm_(summed, weights.last, alpha=alpha)

    def _rows(self, buffer: torch.Tensor, piece: Piece) -> torch.Tensor:
        """A piece's rows of a tile buffer: (G, rows, width), or (rows, width) for a one-member group."""
        g, rows = self.size(piece)
        part = buffer[piece.at : piece.at + g * rows]
        return part.view(g, rows, buffer.shape[-1]) if g > 1 else part

    def _first_terms(self, g: int, weights: Stacked) -> tuple[torch.Tensor, ...]:
        """Separable: the first layer's o term with the bias (G, K, S0, 1, H) and i term (G, K, 1, S1, H), without
        the G axis for a one-member group."""
        group = self.groups[g]
        if not group.separable:
            return ()
        w, b = weights.layers[0]
        lead = (len(group.members), self.samples) if len(group.members) > 1 else (self.samples,)
        o_in, i_in = (x if x.dtype == w.dtype else x.to(w.dtype) for x in self.inputs[g])
        if len(group.members) > 1:
            o_term, i_term = torch.baddbmm(b, o_in, w), torch.bmm(i_in, w)
        else:
            o_term, i_term = torch.addmm(b, o_in, w), torch.mm(i_in, w)
        return o_term.view(*lead, group.s0, 1, -1), i_term.view(*lead, 1, group.s1, -1)

    def _first_layer(self, piece: Piece, terms: tuple[torch.Tensor, ...], weights: Stacked, out: torch.Tensor) -> None:
        """The first layer of the piece's rows into `out` (its rows of the tile)."""
        group = self.groups[piece.group]
        if terms:
            o_term, i_term = terms
            k0, k1, o0, o1 = piece.k0, piece.k1, piece.o0, piece.o1
            if (k0, k1, o0, o1) != (0, self.samples, 0, group.s0):
                o_term, i_term = o_term[..., k0:k1, o0:o1, :, :], i_term[..., k0:k1, :, :, :]
            shape = (*o_term.shape[:-3], o1 - o0, group.s1, out.shape[-1])
            torch.add(o_term, i_term, out=out.view(shape))
        else:
            w, b = weights.layers[0]
            start, (x,) = self.first(piece), self.inputs[piece.group]
            x = x[..., start : start + out.shape[-2], :]
            _linear(x if x.dtype == w.dtype else x.to(w.dtype), w, b, out)


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
    """out = x @ w + b: (G, R, in) inputs batched, a one-member group's (R, in) as a plain matmul."""
    if w.dim() == 2:
        torch.addmm(b, x, w, out=out)
    else:
        torch.baddbmm(b, x, w, out=out)


def _elu(x: torch.Tensor, scratch: torch.Tensor) -> None:
    """x = ELU(x) in place, as max(x, 2^(min(x, 0) log2 e) - 1) (see the module's notes)."""
    torch.clamp_max(x, 0, out=scratch)
    scratch.mul_(LOG2E).exp2_().sub_(1)
    torch.maximum(x, scratch, out=x)
