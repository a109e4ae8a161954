"""Coordinates of every generated weight, vectorised (method notes section 1).

One query per (output channel, input channel) pair of a generated tensor; the raw integer
coordinate is [t, o, i, T, S0, S1] (S1 = 1 for a bias). The network sees
[t/T, o/S0, i/S1, T/N, S0/N, S1/N] with N the maximum width, then a NeRF Fourier encoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from neumeta_core.network import Shape
from neumeta_core.numerics import warm

warm()  # before any vectorised exp, sin or cos: neumeta_core/numerics.py


def raw_coordinates(shapes: Sequence[Shape], tensor: int) -> torch.Tensor:
    """(S0*S1, 6) float coordinates of tensor number `tensor`, rows in (o, i) row-major order."""
    shape = shapes[tensor]
    s0, s1 = shape[0], shape[1] if len(shape) > 1 else 1
    o, i = torch.meshgrid(torch.arange(s0), torch.arange(s1), indexing="ij")
    const = torch.tensor([tensor, len(shapes), s0, s1], dtype=torch.float32)
    fixed = const.expand(s0 * s1, 4)
    return torch.cat([fixed[:, :1], o.reshape(-1, 1), i.reshape(-1, 1), fixed[:, 1:]], dim=1).float()


def normalise(raw: torch.Tensor, norm: int, centred: bool = False, sizes: bool = True) -> torch.Tensor:
    """[t, o, i, T, S0, S1] -> [t/T, o/S0, i/S1, T/N, S0/N, S1/N].

    centred: positions (o + 1/2)/S0 and (i + 1/2)/S1, the centre of a channel's cell in [0, 1],
    so every width samples one function of position at the same kind of point. Without sizes the
    last two inputs are 0: the network cannot tell widths apart except by where it is sampled."""
    pos = raw[:, 1:3] + 0.5 if centred else raw[:, 1:3]
    rel = torch.cat([raw[:, :1], pos], dim=1) / raw[:, 3:]
    size = raw[:, 3:] / norm
    if not sizes:
        size = torch.cat([size[:, :1], torch.zeros_like(size[:, 1:])], dim=1)
    return torch.cat([rel, size], dim=1)


def fourier(x: torch.Tensor, frequencies: int) -> torch.Tensor:
    """NeRF encoding [x, sin(2^k pi x), cos(2^k pi x) for k < F]: (Q, 6) -> (Q, 6 + 12F)."""
    bands = (2.0 ** torch.arange(frequencies, device=x.device, dtype=x.dtype)) * math.pi
    angles = x[:, None, :] * bands[:, None]  # (Q, F, 6)
    waves = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (Q, F, 6, 2)
    return torch.cat([x, waves.flatten(1)], dim=1)


def encoded_dim(frequencies: int) -> int:
    return 6 + 12 * frequencies
