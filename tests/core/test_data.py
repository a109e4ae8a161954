import gzip
import pickle

import numpy as np
import pytest
import torch

from neumeta_core.data import CIFAR_MEAN, CIFAR_STD, cifar10, digits, load, shift
from neumeta_core.errors import InputError
from tests.cifar import write_cifar


def test_cifar10_reads_the_python_batches(tmp_path):
    write_cifar(tmp_path)
    split = cifar10(tmp_path)
    assert split.x_train.shape == (40, 3, 32, 32) and split.x_test.shape == (10, 3, 32, 32)
    with open(tmp_path / "test_batch", "rb") as f:
        raw = pickle.load(f)
    pixel = raw[b"data"][3].reshape(3, 32, 32)[1, 5, 7] / 255.0  # image 3, green, row 5, column 7
    assert split.x_test[3, 1, 5, 7].item() == pytest.approx((pixel - CIFAR_MEAN[1]) / CIFAR_STD[1], abs=1e-5)
    assert split.y_test.tolist() == [int(v) for v in raw[b"labels"]]


def test_cifar10_missing_files_say_what_is_expected(tmp_path):
    with pytest.raises(InputError, match=r"data_batch_1\.\.5 and test_batch"):
        cifar10(tmp_path)


def test_digits_split_is_the_documented_one():
    split = digits()
    assert len(split.y_train) == 1347 and len(split.y_test) == 450
    assert split.x_train.min() >= 0 and split.x_train.max() <= 1


def test_shift_moves_each_image_by_at_most_one_pixel():
    x = torch.zeros(50, 1, 8, 8)
    x[:, 0, 4, 4] = 1.0
    moved = shift(x, torch.Generator().manual_seed(0))
    rows, cols = torch.nonzero(moved[:, 0], as_tuple=True)[1:]
    assert moved.sum() == 50 and rows.sub(4).abs().max() <= 1 and cols.sub(4).abs().max() <= 1
    assert len({(int(r), int(c)) for r, c in zip(rows, cols, strict=True)}) > 3


# --- the MNIST file format (idx) and one folder per class: written here, read back, and refused -------


def write_idx(path, array, magic_type=0x08):
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_mnist(root, n_train=30, n_test=10, size=28, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for part, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{part}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, size, size)))
        write_idx(root / f"{part}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reads_the_four_mnist_files(tmp_path, gz):
    root = write_mnist(tmp_path / "fashion-mnist", gz=gz)
    split = load("idx", root)
    assert split.x_train.shape == (30, 1, 28, 28) and split.x_test.shape == (10, 1, 28, 28)
    assert split.input_shape == (1, 28, 28) and split.classes == 10 and split.labels[9] == "9"  # not a known set
    raw = gzip.decompress((root / "train-images-idx3-ubyte.gz").read_bytes()) if gz else None
    raw = raw or (root / "train-images-idx3-ubyte").read_bytes()
    assert split.x_train[2, 0, 3, 4].item() == pytest.approx(raw[16 + 2 * 784 + 3 * 28 + 4] / 255.0)
    assert split.y_test.tolist() == list(range(10))
    (root / "labels.txt").write_text("".join(f"class {i}\n" for i in range(10)))
    assert load("idx", root).labels[9] == "class 9"


def test_idx_class_names_come_from_labels_txt_and_a_wrong_count_is_refused(tmp_path):
    root = write_mnist(tmp_path / "mine")
    (root / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(InputError, match=r"labels.txt names 2 classes, but the labels hold 10"):
        load("idx", root)


def _damage(kind, root):
    images, labels = root / "train-images-idx3-ubyte", root / "train-labels-idx1-ubyte"
    if kind == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
        return images, "truncated"
    if kind == "magic":
        data = bytearray(labels.read_bytes())
        data[0:4] = b"\x12\x34\x08\x01"
        labels.write_bytes(bytes(data))
        return labels, "not an IDX file"
    if kind == "dimensions":
        write_idx(labels, np.zeros((30, 2)))
        return labels, "2-dimensional"
    if kind == "count":
        write_idx(labels, np.arange(29) % 10)
        return labels, "29 labels for the 30 images"
    if kind == "missing":
        (root / "t10k-labels-idx1-ubyte").unlink()
        return root, "has no t10k-labels-idx1-ubyte"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "magic", "dimensions", "count", "missing"])
def test_a_bad_idx_file_is_one_line_naming_it_and_exit_status_2(kind, tmp_path, capsys):
    from service.cli import main

    root = write_mnist(tmp_path / "mnist")
    named, says = _damage(kind, root)
    with pytest.raises(InputError, match=says):
        load("idx", root)
    argv = ["train", "--model", "examples/separable.py:build", "--dataset", "idx", "--data-dir", str(root)]
    assert main([*argv, "--out", str(tmp_path / "c.pt")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(named) in err and says in err, err


def write_folder(root, classes=("cat", "dog", "owl"), per_class=6, size=(12, 10), mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8), mode).save(root / c / f"{i}.png")
    return root


def test_folder_reads_one_subfolder_per_class(tmp_path):
    root = write_folder(tmp_path / "pets")
    split = load("folder", root)
    assert split.labels == ("cat", "dog", "owl") and split.input_shape == (3, 10, 12)
    assert len(split.y_train) + len(split.y_test) == 18 and sorted(set(split.y_test.tolist())) == [0, 1, 2]
    gray = load("folder", write_folder(tmp_path / "gray", mode="L"))
    assert gray.input_shape == (1, 10, 12)
    write_folder(tmp_path / "split" / "train")
    write_folder(tmp_path / "split" / "test", per_class=2)
    both = load("folder", tmp_path / "split")
    assert len(both.y_train) == 18 and len(both.y_test) == 6


def test_a_bad_folder_is_one_line_naming_what_is_wrong(tmp_path, capsys):
    from PIL import Image

    from service.cli import main

    root = write_folder(tmp_path / "pets")
    (root / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty holds no images"):
        load("folder", root)
    (root / "empty").rmdir()
    Image.new("RGB", (5, 5)).save(root / "cat" / "small.png")
    with pytest.raises(InputError, match=r"small.png is 5x5; the images are 12x10"):
        load("folder", root)
    (root / "cat" / "small.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"small.png: not a readable image"):
        load("folder", root)
    for argv, says in (
        (["--dataset", "folder", "--data-dir", str(tmp_path / "nowhere")], "no such directory"),
        (["--dataset", "folder"], "pass --data-dir"),
        (["--dataset", "folder", "--data-dir", str(root)], "not a readable image"),
    ):
        assert main(["train", "--model", "examples/separable.py:build", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and says in err, err
    (root / "cat" / "small.png").unlink()
    for argv, says in (  # RGB images for a network whose first convolution reads one channel
        (["--dataset", "folder", "--data-dir", str(root)], "cannot run on the data set's inputs of shape (3, 10, 12)"),
    ):
        assert main(["train", "--model", "examples/separable.py:build", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and says in err, err
