"""A network as data: which tensors follow the width and how, what the hypernetwork generates, and which
channels may be permuted together. Derived from a user's `build(width)` at training time
(neumeta_core.structure), stored in the checkpoint, read by the service without the module."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from neumeta_core.export import Fold

Shape = tuple[int, ...]
# a channel group: (tensor, axis, factor) for every axis that indexes its channels; channel c is indices
# c*factor .. c*factor + factor - 1 on that axis (factor > 1 where a flatten spreads a channel over positions)
Group = list[tuple[str, int, int]]


@dataclass(frozen=True)
class Rule:
    """A tensor's shape at width w: slope * w + offset, dimension by dimension."""

    slope: tuple[int, ...]
    offset: tuple[int, ...]

    def at(self, width: int) -> Shape:
        return tuple(s * width + o for s, o in zip(self.slope, self.offset, strict=True))

    @property
    def axes(self) -> tuple[int, ...]:
        return tuple(a for a, s in enumerate(self.slope) if s)


@dataclass(frozen=True)
class Structure:
    """Everything synthesis and export need to know of a network, as plain data."""

    builder: str  # how it was made: FILE.py:FUNCTION or package.module:FUNCTION (informational at serve time)
    input_shape: Shape
    classes: int
    rules: dict[str, Rule]  # every tensor of the state dict, in its order
    generated: list[str]  # made by the hypernetwork, in coordinate order
    statistics: list[str]  # BatchNorm buffers: measured at each width on the calibration images
    groups: dict[str, Group]  # channel groups whose permutation keeps the logits
    folds: list[Fold] = field(default_factory=list)

    def shapes(self, width: int, names: list[str] | None = None) -> dict[str, Shape]:
        return {n: self.rules[n].at(width) for n in (self.generated if names is None else names)}

    def axes(self) -> dict[str, tuple[int, ...]]:
        return {n: self.rules[n].axes for n in self.generated if self.rules[n].axes}

    def hidden_groups(self) -> dict[str, Group]:
        """The groups that follow the width: their channels are what the hypernetwork's o and i index."""
        return {g: m for g, m in self.groups.items() if any(a in self.rules[n].axes for n, a, _ in m)}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rules"] = {n: [list(r.slope), list(r.offset)] for n, r in self.rules.items()}
        data["groups"] = {g: [[n, a, f] for n, a, f in members] for g, members in self.groups.items()}
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Structure:
        return cls(
            builder=str(data["builder"]),
            input_shape=tuple(int(d) for d in data["input_shape"]),
            classes=int(data["classes"]),
            rules={n: Rule(tuple(s), tuple(o)) for n, (s, o) in data["rules"].items()},
            generated=list(data["generated"]),
            statistics=list(data["statistics"]),
            groups={g: [(str(n), int(a), int(f)) for n, a, f in m] for g, m in data["groups"].items()},
            folds=[Fold(**f) for f in data["folds"]],
        )


PROBE = 8  # inputs whose logits at every width a checkpoint keeps: the service verifies its files with them


def probe(input_shape: Shape, count: int = PROBE) -> torch.Tensor:
    """The fixed input batch the reference logits are computed on, the same in every process."""
    return torch.rand(count, *input_shape, generator=torch.Generator().manual_seed(0))
