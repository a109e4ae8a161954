"""`python -m neumeta_core.convert --statistics-images N`: a checkpoint's BatchNorm statistics measured again on the
first N training images, everything trained kept bit for bit, and the same file `neumeta train` writes with
`statistics_images = N` (how the Fashion bundle's statistics were moved to 2,048 images without retraining)."""

from dataclasses import replace

import pytest
import torch

from neumeta_core import checkpoint, convert, train
from neumeta_core.structure import build_at, load_builder
from tests.core.conftest import TINY_NET, TINY_TARGET, TINY_TRAIN

TARGET = replace(TINY_TARGET, model="neumeta_core.builders.digits:digits_full")  # BatchNorm in every layer


@pytest.fixture(scope="module")
def tiny_bn(split, tmp_path_factory):
    path = tmp_path_factory.mktemp("bn") / "tiny.pt"
    checkpoint.save(path, train.train(TARGET, TINY_NET, TINY_TRAIN, split, progress=False), TINY_TRAIN)
    return path


def test_statistics_measured_again_on_n_images_equal_what_training_measures(tiny_bn, split, tmp_path):
    path = tiny_bn
    new = tmp_path / "remeasured.pt"
    assert convert.main(["--statistics-images", "100", str(path), str(new)]) == 0
    old, again = checkpoint.load(path), checkpoint.load(new)
    assert again.train.statistics_images == 100 and old.train.statistics_images == 0
    hyper_old, hyper_new = old.morph.hypernet.state_dict(), again.morph.hypernet.state_dict()
    assert all(torch.equal(hyper_old[k], hyper_new[k]) for k in hyper_old)  # nothing trained changes
    assert old.calibration is not None and again.calibration is not None
    assert torch.equal(old.calibration, again.calibration)  # int8's images are still the kept ones
    k, width = again.morph.samples, 5
    model = build_at(load_builder(TARGET.model), width)
    model.load_state_dict({**again.morph.fixed, **again.morph.generate(width, samples=k)}, strict=False)
    state = train.recalibrate(model, split.x_train[:100]).state_dict()
    measured = again.morph.statistics[k][width]
    assert measured and all(torch.equal(measured[n], state[n]) for n in measured)
    assert not all(torch.equal(measured[n], old.morph.statistics[k][width][n]) for n in measured)  # 100 images, not 512
    assert set(again.accuracy) == set(old.accuracy)

    trained = train.train(TARGET, TINY_NET, replace(TINY_TRAIN, statistics_images=100), split, progress=False)
    for kk, per_width in trained.morph.statistics.items():  # the same as training with the field set
        for w, stats in per_width.items():
            assert all(torch.equal(stats[n], again.morph.statistics[kk][w][n]) for n in stats)


def test_a_bad_count_is_one_line_and_status_2(tiny_bn, tmp_path, capsys):
    path = tiny_bn
    assert convert.main(["--statistics-images", "0", str(path), str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --statistics-images 0: give a number of training images >= 1"
    assert not (tmp_path / "x.pt").exists()
