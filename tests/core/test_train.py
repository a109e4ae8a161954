import hashlib
import itertools

import pytest
import torch

from neumeta_core import checkpoint, train
from neumeta_core.config import TrainConfig
from tests.core.conftest import TINY_NET, TINY_TARGET, TINY_TRAIN


def test_resample_picks_nearest_channels_and_rescales_inputs():
    teacher = {"a": torch.arange(8.0)[:, None], "b": torch.ones(3, 8), "c": torch.ones(3)}
    out = train.resample(teacher, {"a": (0,), "b": (1,)}, {"a": (4, 1), "b": (3, 4), "c": (3,)})
    assert out["a"].flatten().tolist() == [0.0, 2.0, 4.0, 6.0]
    assert torch.equal(out["b"], torch.full((3, 4), 2.0))  # 4 inputs instead of 8: twice the weight
    assert out["c"] is teacher["c"]


def test_resample_follows_both_axes_of_a_hidden_layer_and_each_axis_size():
    """A hidden conv follows the width on both axes; a layer twice as wide keeps twice the channels."""
    w = torch.arange(16.0).reshape(4, 4)  # (out, in), rows 0..3, columns 0..3
    wide = torch.arange(8.0)[:, None].expand(8, 4)
    out = train.resample({"w": w, "wide": wide}, {"w": (0, 1), "wide": (0, 1)}, {"w": (2, 2), "wide": (4, 2)})
    assert out["w"].tolist() == [[0.0, 4.0], [16.0, 20.0]]  # rows 0, 2 and columns 0, 2, inputs doubled
    assert out["wide"][:, 0].tolist() == [0.0, 4.0, 8.0, 12.0]  # 4 of 8 rows: 0, 2, 4, 6, doubled


def test_checkpoint_round_trip(tiny):
    result, path, digest = tiny
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = checkpoint.load(path)
    assert loaded.digest == digest
    assert loaded.target == TINY_TARGET and loaded.hypernet == TINY_NET and loaded.train == TINY_TRAIN
    assert loaded.permutation == result.orders and len(result.orders) == 3  # stem, residual stream, block hidden
    assert set(loaded.accuracy) == set(train.evaluation_widths(TINY_TARGET))
    for width in (2, 5, 8):
        a, b = result.morph.state_dict(width), loaded.morph.state_dict(width)
        assert all(torch.equal(a[k], b[k]) for k in a)


def _net():
    return train.network(TINY_TARGET, (1, 8, 8), 10)


def test_warm_start_fits_the_resampled_teacher():
    torch.manual_seed(0)
    net = _net()
    teacher = net.build(TINY_TARGET.max_width)

    def error(trainer, width=6):
        shapes = trainer.structure.shapes(width)
        goal = train.resample(trainer.teacher, trainer.axes, shapes)
        with torch.no_grad():
            pred = trainer.hypernet(list(shapes.values()))
        return sum(float(train._relative_mse(p, goal[n])) for p, n in zip(pred, shapes, strict=True))

    cfg = TrainConfig(warm_steps=300, coord_noise=0.0)
    trainer = train.HypernetTrainer(TINY_TARGET, TINY_NET, cfg, net, teacher.state_dict())
    before = error(trainer)
    trainer.warm_start(progress=False)
    assert error(trainer) < 0.5 * before


def test_accumulation_windows_start_at_full_width():
    net = _net()
    teacher = net.build(TINY_TARGET.max_width)
    trainer = train.HypernetTrainer(TINY_TARGET, TINY_NET, TrainConfig(accumulation=4), net, teacher.state_dict())
    widths = [trainer._width(micro) for _ in range(50) for micro in range(4)]
    assert widths[::4] == [TINY_TARGET.max_width] * 50
    others = [w for i, w in enumerate(widths) if i % 4]
    assert set(others) <= set(trainer.widths) and len(set(others)) > 1
    single = train.HypernetTrainer(TINY_TARGET, TINY_NET, TrainConfig(accumulation=1), net, teacher.state_dict())
    assert len({single._width(0) for _ in range(100)}) == len(single.widths)  # uniform: every width drawn


def test_distillation_is_zero_for_equal_logits_and_pulls_towards_the_teacher():
    teacher = torch.tensor([[3.0, 0.0, -1.0]])
    assert float(train.distillation(teacher.clone(), teacher, 2.0)) == pytest.approx(0.0, abs=1e-7)
    student = torch.zeros(1, 3, requires_grad=True)
    loss = train.distillation(student, teacher, 2.0)
    loss.backward()
    assert loss.item() > 0 and student.grad is not None and student.grad[0, 0] < 0 < student.grad[0, 2]


def test_kd_and_accumulation_train_end_to_end(split):
    cfg = TrainConfig(pretrain_epochs=1, warm_steps=5, steps=4, batch_size=32, accumulation=2, kd_weight=1.0)
    result = train.train(TINY_TARGET, TINY_NET, cfg, split, progress=False)
    assert set(result.accuracy) == set(train.evaluation_widths(TINY_TARGET))
    assert all(torch.isfinite(p).all() for p in result.morph.hypernet.parameters())


def test_a_grid_hypernetwork_starts_at_the_teacher_and_the_sandwich_phase_trains_every_width(split, tmp_path):
    from dataclasses import replace

    torch.manual_seed(0)
    net = _net()
    teacher = net.build(TINY_TARGET.max_width).state_dict()
    hyper = replace(TINY_NET, grid=True)
    trainer = train.HypernetTrainer(TINY_TARGET, hyper, TrainConfig(), net, teacher)
    with torch.no_grad():
        start = trainer._generate(TINY_TARGET.max_width, noise=True)
    assert all(torch.equal(start[n], teacher[n]) for n in start)  # the grid is the teacher, the correction zero
    cfg = replace(TINY_TRAIN, warm_steps=0, slim_epochs=0.5)
    result = train.train(TINY_TARGET, hyper, cfg, split, progress=False)
    grids = [g.detach() for g in result.morph.hypernet.grids]
    assert len(grids) == len(result.morph.structure.generated)
    learned = [float(m.out.weight.detach().abs().sum()) for m in result.morph.hypernet.mlps]
    assert any(s > 0 for s in learned)  # the correction learned
    path = tmp_path / "grid.pt"
    checkpoint.save(path, result, cfg)
    loaded = checkpoint.load(path)
    assert loaded.hypernet.grid and loaded.train.slim_epochs == 0.5
    for width in (2, 5, 8):  # below, between and at the trained widths: the same weights after a round trip
        a, b = result.morph.state_dict(width), loaded.morph.state_dict(width)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_noise_falls_by_a_cosine_to_its_end_fraction_and_the_served_sets_average_over_the_final_noise(split):
    from dataclasses import replace

    net = _net()
    teacher = net.build(TINY_TARGET.max_width).state_dict()
    cfg = TrainConfig(coord_noise=1.0, noise_end=0.25)
    trainer = train.HypernetTrainer(TINY_TARGET, TINY_NET, cfg, net, teacher)
    width = TINY_TARGET.max_width
    levels = []
    for done in (0.0, 0.25, 0.5, 0.75, 1.0):
        trainer.done = done
        levels.append(trainer.noise(width))
    assert levels[0] == pytest.approx(1.0) and levels[2] == pytest.approx(0.625) and levels[-1] == pytest.approx(0.25)
    assert all(a > b for a, b in itertools.pairwise(levels))  # falls all the way
    constant = train.HypernetTrainer(TINY_TARGET, TINY_NET, TrainConfig(coord_noise=1.0), net, teacher)
    constant.done = 0.9
    assert constant.noise(width) == pytest.approx(1.0)  # the default: no schedule
    kept = train.HypernetTrainer(TINY_TARGET, TINY_NET, replace(cfg, full_noise_smallest=True), net, teacher)
    kept.done = 1.0
    smallest = min(kept.widths)
    assert kept.noise(smallest) == pytest.approx(1.0) and kept.noise(width) == pytest.approx(0.25)
    result = train.train(
        TINY_TARGET, TINY_NET, replace(TINY_TRAIN, warm_steps=0, steps=3, coord_noise=0.8, noise_end=0.5), split,
        progress=False,
    )  # fmt: skip
    assert result.morph.noise == pytest.approx(0.4)
