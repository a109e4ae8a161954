import hashlib

import pytest
import torch

from neumeta_core import checkpoint, train
from neumeta_core.config import TrainConfig
from tests.core.conftest import TINY_NET, TINY_TARGET, TINY_TRAIN


def test_resample_picks_nearest_channels_and_rescales_inputs():
    teacher = {"a": torch.arange(8.0)[:, None], "b": torch.ones(3, 8), "c": torch.ones(3)}
    out = train.resample(teacher, {"a": 0, "b": 1}, width=4, max_width=8)
    assert out["a"].flatten().tolist() == [0.0, 2.0, 4.0, 6.0]
    assert torch.equal(out["b"], torch.full((3, 4), 2.0))  # 4 inputs instead of 8: twice the weight
    assert out["c"] is teacher["c"]


def test_checkpoint_round_trip(tiny):
    result, path, digest = tiny
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = checkpoint.load(path)
    assert loaded.digest == digest
    assert loaded.target == TINY_TARGET and loaded.hypernet == TINY_NET and loaded.train == TINY_TRAIN
    assert loaded.permutation == result.orders and set(result.orders) == {"conv1.out", "stream", "block.hidden"}
    assert set(loaded.accuracy) == set(train.evaluation_widths(TINY_TARGET))
    for width in (2, 5, 8):
        a, b = result.morph.state_dict(width), loaded.morph.state_dict(width)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_warm_start_fits_the_resampled_teacher():
    torch.manual_seed(0)
    teacher = train.family(TINY_TARGET.family).build(TINY_TARGET, TINY_TARGET.max_width)

    def error(trainer, width=6):
        goal = train.resample(trainer.teacher, trainer.axes, width, TINY_TARGET.max_width)
        shapes = trainer.family.generated_shapes(TINY_TARGET, width)
        with torch.no_grad():
            pred = trainer.hypernet(list(shapes.values()))
        return sum(float(train._relative_mse(p, goal[n])) for p, n in zip(pred, shapes, strict=True))

    trainer = train.HypernetTrainer(TINY_TARGET, TINY_NET, TrainConfig(warm_steps=300, coord_noise=0.0), teacher)
    before = error(trainer)
    trainer.warm_start(progress=False)
    assert error(trainer) < 0.5 * before


def test_load_rejects_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"hello": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a neumeta-checkpoint"):
        checkpoint.load(bad)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        checkpoint.load(truncated)
