"""Data sets, all read offline: scikit-learn's bundled digits (8x8 images); from a directory the user
provides, the MNIST file format (idx: MNIST, Fashion-MNIST, KMNIST), CIFAR-10's python batches, or one
sub-folder of images per class (torchvision's ImageFolder layout). Input shape, classes and label names
come from the data. A missing, truncated or mislabelled file is an InputError naming it."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from dataclasses import dataclass, replace
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
    labels: tuple[str, ...] = tuple(str(d) for d in range(10))  # class names, by label
    name: str = "digits"  # what the data set is called: idx and folder, the directory's name (fashion-mnist)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def classes(self) -> int:
        return len(self.labels)

    def to(self, device: str | torch.device) -> Split:
        x_train, y_train, x_test, y_test = (
            t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)
        )
        return replace(self, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

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


DATASETS = ("digits", "idx", "cifar10", "folder")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist: idx's default directory


def load(dataset: str, data_dir: str | Path | None) -> Split:
    """The data set named (digits | idx | cifar10 | folder); every one but digits is read from `data_dir` (idx:
    by default Debian's Fashion-MNIST, where it is installed)."""
    if dataset not in DATASETS:
        raise InputError(f"--dataset must be one of {' | '.join(DATASETS)}, not {dataset!r}")
    if dataset == "digits":
        return digits()
    if data_dir is None and dataset == "idx" and FASHION_DIR.is_dir():
        data_dir = FASHION_DIR
    if data_dir is None:
        hint = f" (or install Debian's dataset-fashion-mnist for {FASHION_DIR})" if dataset == "idx" else ""
        raise InputError(f"the {dataset} data set is read from a directory: pass --data-dir{hint}")
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"--data-dir {root}: no such directory")
    return {"idx": idx, "cifar10": cifar10, "folder": folder}[dataset](root)


# the IDX type byte -> numpy's name for it (big-endian) and its size
IDX_TYPES: dict[int, tuple[str, int]] = {0x08: ("u1", 1), 0x09: ("i1", 1), 0x0B: (">i2", 2), 0x0C: (">i4", 4)}
IDX_TYPES |= {0x0D: (">f4", 4), 0x0E: (">f8", 8)}
FASHION_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


# the class names of known idx data sets, by the sha256 of their test labels (one byte each, in file order)
LABELS = {"3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9": FASHION_LABELS}  # Zalando's


def read_idx(path: Path, dims: int) -> np.ndarray:
    """One IDX file (gzipped or not): magic 0x0000TTDD (type TT, DD dimensions), DD big-endian u32 sizes,
    then the data. InputError naming the file when its magic, dimensions or length are wrong."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise InputError(f"{path} is not an IDX file (its magic number is {raw[:4].hex() or 'missing'})")
    if raw[3] != dims:
        raise InputError(f"{path} holds {raw[3]}-dimensional data; {dims} dimensions were expected here")
    dtype, size = IDX_TYPES[raw[2]]
    header = 4 + 4 * dims
    if len(raw) < header:
        raise InputError(f"{path} is truncated: its header is incomplete")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    expected = header + size * int(np.prod(shape))
    if len(raw) != expected:
        raise InputError(f"{path} is truncated or damaged: {len(raw)} bytes, its header says {expected}")
    return np.frombuffer(raw, dtype=np.dtype(dtype), offset=header).reshape(shape)


def _idx_file(root: Path, stem: str) -> Path:
    """`{stem}` or `{stem}.gz`, with MNIST's dotted spelling too (train-images.idx3-ubyte)."""
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise InputError(f"{root} has no {stem}[.gz]: the idx data set needs the four MNIST-format files")


def _idx_labels(root: Path, test_labels: np.ndarray, classes: int) -> tuple[str, ...]:
    listed = root / "labels.txt"
    if listed.is_file():
        names = tuple(line.strip() for line in listed.read_text(errors="replace").splitlines() if line.strip())
        if len(names) != classes:
            raise InputError(f"{listed} names {len(names)} classes, but the labels hold {classes} (one name per line)")
        return names
    known = LABELS.get(hashlib.sha256(test_labels.astype(np.uint8).tobytes()).hexdigest(), ())
    return known if len(known) == classes else tuple(map(str, range(classes)))


def idx(root: Path) -> Split:
    """MNIST-format files in `root`: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte
    and t10k-labels-idx1-ubyte (each may be .gz). Pixels / 255, one channel. The classes are named by
    labels.txt beside them (one name per line, class 0 first), by LABELS when the test labels are those of a
    known data set (wherever its files lie), after the digits otherwise."""
    arrays = []
    for part in ("train", "t10k"):
        images_path, labels_path = (
            _idx_file(root, f"{part}-images-idx3-ubyte"),
            _idx_file(root, f"{part}-labels-idx1-ubyte"),
        )
        images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if len(images) != len(labels):
            raise InputError(f"{labels_path} holds {len(labels)} labels for the {len(images)} images of {images_path}")
        arrays.append((images, labels, labels_path))
    if arrays[0][0].shape[1:] != arrays[1][0].shape[1:]:
        raise InputError(f"the training and test images of {root} differ in size")
    classes = int(max(arrays[0][1].max(), arrays[1][1].max())) + 1
    for _, labels, path in arrays:
        if labels.min() < 0:
            raise InputError(f"{path} holds a negative label")
    names = _idx_labels(root, arrays[1][1], classes)
    (x_tr, y_tr, _), (x_te, y_te, _) = arrays

    def pixels(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)

    def classes_of(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64))

    return Split(pixels(x_tr), classes_of(y_tr), pixels(x_te), classes_of(y_te), pad=2, labels=names, name=root.name)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".webp", ".tif", ".tiff")


def folder(root: Path, test_fraction: float = 0.2) -> Split:
    """One sub-folder of images per class (ImageFolder), in `root`, or in `root/train` and `root/test` when
    both exist (otherwise a fixed, stratified 20 % is held out). Every image is converted to the first one's
    mode (grayscale or RGB) and must have its size; pixels / 255."""
    from PIL import Image, UnidentifiedImageError

    def scan(top: Path) -> dict[str, list[Path]]:
        classes = sorted(d for d in top.iterdir() if d.is_dir())
        if not classes:
            raise InputError(f"{top} has no class folders: the folder data set is one sub-folder of images per class")
        out = {}
        for d in classes:
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"{d} holds no images ({', '.join(IMAGE_SUFFIXES)}): every class needs some")
            out[d.name] = files
        return out

    def read(
        files: dict[str, list[Path]], names: list[str], like: tuple[str, tuple[int, int]] | None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, tuple[int, int]] | None]:
        xs, ys = [], []
        for label, name in enumerate(names):
            for f in files.get(name, []):
                try:
                    with Image.open(f) as im:
                        im.load()
                        mode, size = like or (("L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"), im.size)
                        like = like or (mode, size)
                        if im.size != size:
                            raise InputError(f"{f} is {im.size[0]}x{im.size[1]}; the images are {size[0]}x{size[1]}")
                        xs.append(np.asarray(im.convert(mode), dtype=np.uint8))
                except (UnidentifiedImageError, OSError) as exc:
                    raise InputError(f"{f}: not a readable image ({exc})") from None
                ys.append(label)
        x = torch.from_numpy(np.stack(xs).astype(np.float32) / 255.0)
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        return x, torch.tensor(ys, dtype=torch.long), like

    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files, test_files = scan(root / "train"), scan(root / "test")
        names = sorted(train_files)
        extra = sorted(set(test_files) - set(train_files))
        if extra:
            raise InputError(f"{root / 'test'} has classes the training folder lacks: {', '.join(extra)}")
        x_tr, y_tr, like = read(train_files, names, None)
        x_te, y_te, _ = read(test_files, names, like)
    else:
        files = scan(root)
        names = sorted(files)
        x, y, _ = read(files, names, None)
        if len(y) < 2 * len(names):
            raise InputError(f"{root}: {len(y)} images for {len(names)} classes; at least two per class are needed")
        idx_tr, idx_te = train_test_split(
            np.arange(len(y)), test_size=test_fraction, random_state=0, stratify=y.numpy()
        )
        x_tr, y_tr, x_te, y_te = x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]
    return Split(x_tr, y_tr, x_te, y_te, pad=max(1, x_tr.shape[-1] // 16), labels=tuple(names), name=root.name)


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
    labels = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    return Split(x_train, y_train, x_test, y_test, pad=4, flip=True, labels=labels, name="cifar10")


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
