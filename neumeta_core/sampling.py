"""From a ratio to a width, and from a width to a network with generated weights."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch

from neumeta_core.config import TargetConfig
from neumeta_core.errors import InputError
from neumeta_core.export import Graph
from neumeta_core.hypernet import HyperNetwork
from neumeta_core.network import Shape, Structure
from neumeta_core.plan import Plan, Stacked

PLAN_CACHE_BYTES = 128 << 20  # the encoded inputs of the plans kept per (width, K): 2.2 MB for every served
# width of the Fashion-MNIST bundle (separable: S0 + S1 rows per set), 60 MB where every query is encoded


def width_for(ratio: float, max_width: int) -> int:
    """h = round((1 - gamma) * h_max), halves rounded up; gamma is the paper's compression ratio."""
    return math.floor((1.0 - ratio) * max_width + 0.5)


def ratio_for(width: int, max_width: int) -> float:
    """The ratio actually served once the width is an integer."""
    return 1.0 - width / max_width


def unseen_widths(target: TargetConfig) -> list[int]:
    """Widths training never drew, for evaluation: two between trained ones (where the stride
    leaves gaps), the middle of the range below, and the smallest served width."""
    trained = set(target.trained_widths())
    gaps = [h for h in range(target.train_min_width, target.max_width) if h not in trained]
    between = {min(gaps, key=lambda h: abs(h - f * target.max_width)) for f in (0.85, 0.4)} if gaps else set()
    below = {target.min_width, (target.min_width + target.train_min_width) // 2} - trained
    return sorted(between | below, reverse=True)


class MorphicNet:
    """A trained hypernetwork with what it generates into: the network's structure, its fixed tensors, and
    the BatchNorm statistics measured at each width at training time. No module of the network is needed:
    `state_dict(width)` is the state of build(width), which export fills into the stored graph."""

    def __init__(
        self,
        target: TargetConfig,
        structure: Structure,
        hypernet: HyperNetwork,
        fixed: dict[str, torch.Tensor],
        statistics: dict[int, dict[int, dict[str, torch.Tensor]]],
        graphs: dict[int, Graph],
        samples: int = 1,
        noise: float = 1.0,
        seed: int = 0,
        lattice: bool = False,
    ) -> None:
        self.target = target
        self.structure = structure
        self.hypernet = hypernet.eval()
        self.fixed = fixed
        # K -> width -> BatchNorm buffers of build(width) with K weight sets (empty without BatchNorm)
        self.statistics = statistics
        self.graphs = graphs  # width -> the exported graph, without weights
        self.samples = samples
        self.noise = noise
        self.seed = seed
        self.lattice = lattice  # the K weight sets on a lattice over each weight's noise cell (not random)
        self._plans: OrderedDict[tuple[int, int], Plan] = OrderedDict()
        self._lock = threading.Lock()
        self._stacked: dict[tuple[int, ...], Stacked] = {}  # the hypernetwork's weights stacked per group: fixed

    @property
    def device(self) -> torch.device:
        return next(self.hypernet.parameters()).device

    @property
    def lowest(self) -> int:
        """The smallest width the checkpoint holds statistics and a graph for (below the served range)."""
        return min(self.graphs)

    @contextmanager
    def allowing(self, lowest: int) -> Iterator[None]:
        """Widths down to `lowest` accepted inside the block: to measure where the checkpoint does
        not serve (below its min_width); the served range is restored on exit."""
        if lowest < self.lowest:
            raise InputError(f"this checkpoint holds widths down to {self.lowest}, not {lowest}")
        served = self.target
        self.target = replace(served, min_width=min(lowest, served.min_width))
        try:
            yield
        finally:
            self.target = served

    def check_width(self, width: int) -> None:
        lo, hi = self.target.min_width, self.target.max_width
        if not lo <= width <= hi:
            raise InputError(f"width {width} is outside the supported range {lo}..{hi}")

    def shapes(self, width: int) -> dict[str, Shape]:
        return self.structure.shapes(width)

    @torch.no_grad()
    def generate(self, width: int, precision: str = "float32", samples: int | None = None) -> dict[str, torch.Tensor]:
        """The generated tensors at `width`: deterministic, the noise comes from a fixed seed.
        `precision` of the hypernetwork's arithmetic: float32, tf32 (CUDA) or bfloat16; `samples`: K weight
        sets averaged (default: the checkpoint's own)."""
        self.check_width(width)
        k = self.samples if samples is None else samples
        shapes = self.shapes(width)
        plan, cache = self.plan(width, k), self._stacked
        tensors = self.hypernet.synthesize(list(shapes.values()), k, precision=precision, plan=plan, cache=cache)
        return dict(zip(shapes, tensors, strict=True))

    def plan(self, width: int, samples: int) -> Plan:
        """The synthesis plan at `width` with K = `samples` (its encoded inputs, groups, tiles and grid parts): the
        same for every synthesis (the noise comes from a fixed seed), so made once and kept, least recently used
        first out, within PLAN_CACHE_BYTES."""
        key = (width, samples)
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
        gen = torch.Generator().manual_seed(self.seed)
        noise = self.noise if samples > 1 else 0.0
        made = Plan(self.hypernet, list(self.shapes(width).values()), samples, noise, gen, self.lattice)
        with self._lock:
            self._plans[key] = made
            while self.plans_bytes() > PLAN_CACHE_BYTES and len(self._plans) > 1:
                self._plans.popitem(last=False)
        return made

    def plans_bytes(self) -> int:
        return sum(p.nbytes() for p in self._plans.values())

    def prepare(self, widths: list[int], samples: int | None = None) -> None:
        """Make the plans of `widths` ahead of the first request, while they fit in PLAN_CACHE_BYTES, and the
        sessions that check their files (export.Graph.runner)."""
        for width in widths:
            self.graphs[width].runner  # noqa: B018 (made now, not on the first request)
        for width in widths:
            self.plan(width, self.samples if samples is None else samples)
            if self.plans_bytes() >= PLAN_CACHE_BYTES:
                break

    def state_dict(self, width: int, precision: str = "float32", samples: int | None = None) -> dict[str, torch.Tensor]:
        """The state of build(width): fixed and generated tensors, and the BatchNorm statistics measured at
        this width at training time (`stats`)."""
        generated = self.generate(width, precision, samples)
        return {**self.fixed, **self.stats(width, samples), **generated}

    def stats(self, width: int, samples: int | None = None) -> dict[str, torch.Tensor]:
        """The BatchNorm statistics of build(width) with K weight sets, measured at training time for K = 1 and
        the checkpoint's own K; another K gets those of the checkpoint's K (close: the weights differ little)."""
        k = self.samples if samples is None else samples
        per_width = self.statistics.get(k) or self.statistics.get(self.samples, {})
        return per_width.get(width, {})

    def param_count(self, width: int) -> int:
        """Parameters of the served file at `width` (BatchNorm folded), from shapes alone."""
        shapes = self.structure.shapes(width, [n for n in self.graphs[width].weights if n in self.structure.rules])
        folded = {f.out_bias: self.structure.rules[f.weight].at(width)[0] for f in self.structure.folds}
        return sum(math.prod(s) for s in shapes.values()) + sum(
            folded[n] for n in self.graphs[width].weights if n in folded
        )
