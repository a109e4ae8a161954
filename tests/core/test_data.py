import pickle

import pytest
import torch

from neumeta_core.data import CIFAR_MEAN, CIFAR_STD, cifar10, digits, shift
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
