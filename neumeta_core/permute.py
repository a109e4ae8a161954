"""Channel permutation for smoothness: a short Hamiltonian path through the channels.

Neighbouring channels of the pretrained weights should look alike, so that the hypernetwork
fits a smooth function of o/S0 (method notes section 4). For the morphable block, the hidden
channels form one group (conv_a rows and bias, conv_b columns); the stream and classes never move.
"""

from __future__ import annotations

from itertools import pairwise

import torch


def channel_features(tensors: dict[str, torch.Tensor], axes: dict[str, int]) -> torch.Tensor:
    """(C, D) rows: every weight attached to channel c across the group's tensors."""
    rows = [tensors[name].movedim(axis, 0).reshape(tensors[name].shape[axis], -1) for name, axis in axes.items()]
    return torch.cat(rows, dim=1)


def total_variation(features: torch.Tensor) -> float:
    """Sum of L1 distances between consecutive channels."""
    return float((features[1:] - features[:-1]).abs().sum())


def shortest_path(dist: torch.Tensor) -> list[int]:
    """Short open Hamiltonian path: greedy nearest neighbour from every start, then 2-opt.

    Small groups only (tens of channels): O(n^3) per 2-opt sweep is nothing at that size.
    """
    n = dist.shape[0]
    d: list[list[float]] = dist.double().tolist()
    best: list[int] = []
    best_len = float("inf")
    for start in range(n):
        path, free = [start], set(range(n)) - {start}
        while free:
            nxt = min(free, key=lambda j: d[path[-1]][j])
            path.append(nxt)
            free.remove(nxt)
        path = _two_opt(path, d)
        length = _path_length(path, d)
        if length < best_len:
            best, best_len = path, length
    return best


def _path_length(path: list[int], d: list[list[float]]) -> float:
    return sum(d[a][b] for a, b in pairwise(path))


def _two_opt(path: list[int], d: list[list[float]]) -> list[int]:
    improved = True
    while improved:
        improved = False
        for i in range(len(path) - 1):
            for j in range(i + 1, len(path)):
                # reverse path[i..j]; only the edges at its two ends change
                last = j + 1 < len(path)
                before = (d[path[i - 1]][path[i]] if i > 0 else 0.0) + (d[path[j]][path[j + 1]] if last else 0.0)
                after = (d[path[i - 1]][path[j]] if i > 0 else 0.0) + (d[path[i]][path[j + 1]] if last else 0.0)
                if after < before - 1e-9:
                    path[i : j + 1] = path[i : j + 1][::-1]
                    improved = True
    return path


def smooth_order(tensors: dict[str, torch.Tensor], axes: dict[str, int]) -> list[int]:
    feats = channel_features(tensors, axes)
    return shortest_path(torch.cdist(feats, feats, p=1))


def apply_order(tensors: dict[str, torch.Tensor], axes: dict[str, int], order: list[int]) -> dict[str, torch.Tensor]:
    """A copy of `tensors` with the group's axis of every member reindexed by `order`."""
    idx = torch.tensor(order)
    out = dict(tensors)
    for name, axis in axes.items():
        out[name] = tensors[name].index_select(axis, idx.to(tensors[name].device)).contiguous()
    return out
