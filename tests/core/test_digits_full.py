"""digits_full: every layer of the digits CNN generated, BatchNorm kept and recalibrated per width."""

import pytest
import torch

from neumeta_core import baselines, checkpoint, export, train
from neumeta_core.config import HyperNetConfig, TargetConfig, TrainConfig
from neumeta_core.hypernet import HyperNetwork
from neumeta_core.sampling import MorphicNet
from neumeta_core.targets import family

FULL = TargetConfig(family="digits_full", max_width=8, train_min_width=5, train_stride=1, min_width=2)
FULL_BN = TargetConfig(**{**FULL.to_dict(), "batchnorm": True})
NET = HyperNetConfig(hidden=16, layers=2, frequencies=2)
STEPS = TrainConfig(pretrain_epochs=1, warm_steps=20, steps=10, batch_size=32, coord_noise=0.0, kd_weight=0.0)


@pytest.fixture(scope="module", params=[FULL, FULL_BN], ids=["folded", "batchnorm"])
def trained(request, split, tmp_path_factory):
    result = train.train(request.param, NET, STEPS, split, progress=False)
    path = tmp_path_factory.mktemp("full") / "full.pt"
    checkpoint.save(path, result, STEPS)
    return checkpoint.load(path)


def test_every_layer_is_generated(trained):
    assert trained.morph.fixed == {}  # nothing is fixed: the hypernetwork makes every tensor
    names = trained.generated_tensors()
    assert {"conv1.conv.weight", "conv2.conv.weight", "conv3.conv.weight", "fc.weight", "fc.bias"} <= set(names)
    for width in (2, 3, 8):
        state = trained.morph.state_dict(width)
        assert state["conv2.conv.weight"].shape == (width, width, 3, 3)
        assert state["conv3.conv.weight"].shape == (2 * width, width, 3, 3)
        assert state["fc.weight"].shape == (10, 2 * width)
        assert trained.morph.param_count(width) == 27 * width**2 + 33 * width + 10  # served, BatchNorm folded


def test_served_model_exports_exactly(trained, split):
    for width in (3, 7):
        model = trained.morph.synthesize(width)
        body = export.to_onnx("digits_full", model.state_dict())
        assert export.verify(body, model, split.x_test[:32]) <= 1e-4


def test_recalibration_uses_the_statistics_at_the_requested_width(split):
    """The folded network equals the BatchNorm network evaluated with the calibration batch's own
    statistics; other images would give other weights."""
    torch.manual_seed(0)
    fam = family("digits_full")
    net = fam.generated_net(FULL_BN, 6).train()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    images = split.x_train[:64]
    hyper = HyperNetwork(NET, len(fam.generated_shapes(FULL_BN, 8)), 8)
    morph = MorphicNet(FULL_BN, hyper, {}, calibration=images)
    generated = {k: v for k, v in net.state_dict().items() if k in fam.generated_shapes(FULL_BN, 6)}
    folded = fam.build(FULL_BN, 6)
    folded.load_state_dict(morph.calibrate(6, generated))
    with torch.no_grad():
        expected = net.train()(images)  # batch statistics of exactly these images
        # the stored variance is the unbiased one (n / (n - 1), n >= 1024 values per channel)
        assert torch.allclose(folded.eval()(images), expected, atol=2e-3)
        assert not torch.allclose(folded.eval()(images), net.eval()(images), atol=2e-3)  # not the defaults
        other = MorphicNet(FULL_BN, hyper, {}, calibration=split.x_train[64:128]).calibrate(6, generated)
    assert not torch.allclose(other["conv1.conv.bias"], folded.state_dict()["conv1.conv.bias"])


def test_batchnorm_target_needs_calibration_images():
    hyper = HyperNetwork(NET, 11, 8)
    with pytest.raises(ValueError, match="calibration"):
        MorphicNet(FULL_BN, hyper, {})


def test_l1_pruning_prunes_every_layer_consistently(trained, split):
    state = baselines.l1_pruned(trained, 3)
    model = family("digits_full").build(trained.target, 3)
    model.load_state_dict(state)  # shapes agree across all three layers
    full = baselines.l1_pruned(trained, trained.target.max_width)
    teacher = family("digits_full").build(trained.target, trained.target.max_width)
    teacher.load_state_dict(full)
    assert train.accuracy(teacher, split.x_test, split.y_test) == pytest.approx(trained.metadata["teacher_accuracy"])


def test_the_earlier_block_only_bundle_is_still_shipped(split):
    block = checkpoint.load(checkpoint.BLOCK)
    assert block.target.family == "digits_cnn" and block.generated_tensors()[0] == "block.conv_a.weight"
    assert train.accuracy(block.morph.synthesize(16), split.x_test, split.y_test) == pytest.approx(block.accuracy[16])
