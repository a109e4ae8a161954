"""The implicit network: coordinates of a weight -> its value (method notes section 2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from neumeta_core.config import HyperNetConfig
from neumeta_core.coords import encoded_dim, fourier, normalise, raw_coordinates
from neumeta_core.targets import Shape


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
    """One residual MLP per generated tensor, routed by the clean tensor index."""

    def __init__(self, cfg: HyperNetConfig, num_tensors: int, norm: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = norm
        self.mlps = nn.ModuleList(ResidualMLP(encoded_dim(cfg.frequencies), cfg) for _ in range(num_tensors))

    def forward(
        self,
        shapes: Sequence[Shape],
        samples: int = 1,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
        tensors: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """Generated tensors in `shapes` order (or those numbered in `tensors`), each the mean of
        `samples` weight sets.

        Sample 0 uses the clean coordinates; samples 1.. add uniform noise of width `noise`
        to all six raw coordinates (training passes samples=1 with noise > 0 instead).
        The noise is drawn on the CPU from `generator`, so every device sees the same values.
        """
        device = next(self.parameters()).device
        out = []
        if len(shapes) != len(self.mlps):
            raise ValueError(f"{len(shapes)} shapes for a hypernetwork of {len(self.mlps)} tensors")
        for t in range(len(shapes)) if tensors is None else tensors:
            shape, mlp = shapes[t], self.mlps[t]
            raw = raw_coordinates(shapes, t)  # (Q, 6)
            reps = raw.expand(samples, *raw.shape)  # (K, Q, 6)
            if noise > 0:
                jitter = (torch.rand(reps.shape, generator=generator) - 0.5) * noise
                if samples > 1:
                    jitter[0] = 0.0  # the clean sample, as released
                reps = reps + jitter
            x = fourier(normalise(reps.reshape(-1, 6).to(device), self.norm), self.cfg.frequencies)
            y = mlp(x).reshape(samples, raw.shape[0], -1).mean(dim=0)  # (Q, output_dim)
            out.append(_to_tensor(y, shape))
        return out


def _to_tensor(y: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Per-query outputs -> the tensor: a conv takes the k*k middle entries; others entry 0.

    The result is divided by the input-channel count S1 (1 for a bias), so weights scale
    with 1/fan-in as the width changes (notes section 1, output scaling).
    """
    kernel = int(torch.tensor(shape[2:]).prod().item()) if len(shape) > 2 else 1
    start = y.shape[1] // 2 - kernel // 2 if len(shape) > 2 else 0
    s1 = shape[1] if len(shape) > 1 else 1
    return y[:, start : start + kernel].reshape(shape) / s1
