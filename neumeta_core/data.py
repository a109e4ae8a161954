"""Data sets made locally: scikit-learn's bundled digits (8x8 images, no download)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor  # (N, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits() -> Split:
    """The fixed, documented split: train_test_split(test_size=0.25, random_state=0, stratify=y)."""
    data = load_digits()
    x = data.images.astype("float32") / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.25, random_state=0, stratify=data.target)
    return Split(
        torch.from_numpy(x_tr).unsqueeze(1),
        torch.from_numpy(y_tr).long(),
        torch.from_numpy(x_te).unsqueeze(1),
        torch.from_numpy(y_te).long(),
    )


def shift(x: torch.Tensor, generator: torch.Generator, pixels: int = 1) -> torch.Tensor:
    """Random translation by up to `pixels` in each direction, zero fill, one offset per image."""
    b, _, hgt, wid = x.shape
    padded = torch.nn.functional.pad(x, (pixels,) * 4)
    off = torch.randint(0, 2 * pixels + 1, (b, 2), generator=generator)
    rows = off[:, :1] + torch.arange(hgt)  # (B, H)
    cols = off[:, 1:] + torch.arange(wid)  # (B, W)
    batch = torch.arange(b)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
