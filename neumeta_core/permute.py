"""Channel permutation for smoothness: a shortest Hamiltonian path through each channel group.

Neighbouring channels of the pretrained weights should look alike, so that the hypernetwork
fits a smooth function of o/S0 and i/S1 (method notes section 4). A group is every (tensor, axis)
that indexes the same channels: a layer's outputs and biases and the next layer's inputs, and,
across a residual addition, every tensor that reads or writes the stream. The input image
channels and the class outputs belong to no group, so they never move.
"""

from __future__ import annotations

from dataclasses import dataclass

import fast_tsp
import torch

from neumeta_core.network import (
    Group,
)  # [(tensor, axis, factor)]: channel c is indices c*factor .. c*factor + factor - 1

SCALE = 65_535  # fast-tsp takes uint16 distances: the largest becomes SCALE


@dataclass(frozen=True)
class Smoothing:
    state: dict[str, torch.Tensor]
    orders: dict[str, list[int]]  # group name -> new position i holds old channel orders[i]
    total_variation: dict[str, tuple[float, float]]  # group name -> (before, after)


def channel_features(tensors: dict[str, torch.Tensor], group: Group) -> torch.Tensor:
    """(C, D) rows: every weight attached to channel c across the group's tensors."""
    rows = [
        tensors[name].movedim(axis, 0).reshape(tensors[name].shape[axis] // factor, -1) for name, axis, factor in group
    ]
    return torch.cat(rows, dim=1)


def total_variation(features: torch.Tensor) -> float:
    """Sum of L1 distances between consecutive channels."""
    return float((features[1:] - features[:-1]).abs().sum())


def shortest_path(dist: torch.Tensor, seconds: float = 1.0) -> list[int]:
    """Short open Hamiltonian path: a TSP tour through a dummy city at distance 0 from all,
    cut open at the dummy (fast-tsp; exact for up to 20 cities, local search beyond), starting
    from the end with the lower channel index."""
    n = dist.shape[0]
    if n <= 2:
        return list(range(n))
    scaled = (dist.double() / dist.max().clamp_min(1e-12) * SCALE).round().long()
    full = torch.zeros(n + 1, n + 1, dtype=torch.long)
    full[1:, 1:] = scaled
    tour = fast_tsp.find_tour(full.tolist(), duration_seconds=seconds)
    start = tour.index(0)
    path = [c - 1 for c in tour[start + 1 :] + tour[:start]]
    # a path and its reverse are equally short, and the search returns either: fix the direction
    # (the lower channel first), or the same teacher gives different permutations run to run
    return path if path[0] < path[-1] else path[::-1]


def apply_order(tensors: dict[str, torch.Tensor], group: Group, order: list[int]) -> dict[str, torch.Tensor]:
    """A copy of `tensors` with every axis of the group reindexed by `order`."""
    out = dict(tensors)
    for name, axis, factor in group:
        idx = (torch.tensor(order)[:, None] * factor + torch.arange(factor)).reshape(-1)
        out[name] = out[name].index_select(axis, idx.to(out[name].device)).contiguous()  # both axes of a w x w layer
    return out


def smooth(state: dict[str, torch.Tensor], groups: dict[str, Group]) -> Smoothing:
    """Permute every group along its shortest path; the network computes the same function."""
    orders, tv = {}, {}
    for name, group in groups.items():
        before = channel_features(state, group)
        order = shortest_path(torch.cdist(before, before, p=1))
        state = apply_order(state, group, order)
        orders[name] = order
        tv[name] = (total_variation(before), total_variation(channel_features(state, group)))
    return Smoothing(state, orders, tv)
