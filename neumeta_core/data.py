"""Data sets available offline: scikit-learn's bundled digits (8x8 images), and CIFAR-10 read
from a directory the user provides."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from neumeta_core.errors import InputError


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor  # (N, C, H, W) float32: digits (N, 1, 8, 8) in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    pad: int = 1  # training augmentation: random translation by up to `pad` pixels ...
    flip: bool = False  # ... and a random horizontal flip

    def to(self, device: str | torch.device) -> Split:
        x_train, y_train, x_test, y_test = (
            t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)
        )
        return Split(x_train, y_train, x_test, y_test, pad=self.pad, flip=self.flip)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random shifts (and flips); the random numbers come from a CPU generator on any device."""
        x = shift(x, generator, self.pad)
        if self.flip:
            mirror = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        return x


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
    b, c, hgt, wid = x.shape
    padded = torch.nn.functional.pad(x, (pixels,) * 4)
    off = torch.randint(0, 2 * pixels + 1, (b, 2), generator=generator).to(x.device)
    rows = off[:, :1] + torch.arange(hgt, device=x.device)  # (B, H)
    cols = off[:, 1:] + torch.arange(wid, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def for_family(dataset: str, data_dir: str | Path | None) -> Split:
    """The data set a target family is trained and evaluated on."""
    if dataset == "digits":
        return digits()
    if data_dir is None:
        raise InputError(f"the {dataset} data set is read from a directory: pass --data-dir")
    return cifar10(data_dir)


def cifar10(directory: str | Path) -> Split:
    """CIFAR-10 from the standard python-pickle batches in `directory` (no download).

    Expects data_batch_1..5 and test_batch as published (each a pickled dict with b"data",
    (N, 3072) uint8 in channel-major order, and b"labels"); missing training batches are
    skipped, so a directory with data_batch_1 and test_batch is enough for a small run.
    Images are scaled to [0, 1] and normalised per channel with the usual mean and std.
    """
    root = Path(directory)
    train_files = sorted(root.glob("data_batch_*"))
    test_file = root / "test_batch"
    if not train_files or not test_file.is_file():
        raise InputError(f"{root} must hold data_batch_1..5 and test_batch (CIFAR-10 python version)")
    x_train, y_train = _cifar_batches(train_files)
    x_test, y_test = _cifar_batches([test_file])
    return Split(x_train, y_train, x_test, y_test, pad=4, flip=True)


def _cifar_batches(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    images: list[np.ndarray] = []
    labels: list[int] = []
    for path in files:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the published format is a pickle
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(int(v) for v in batch[b"labels"])
    x = torch.from_numpy(np.concatenate(images)).float() / 255.0
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(labels, dtype=torch.long)
