import pytest
import torch
from torch.func import functional_call

from neumeta_core import slimmable
from neumeta_core.builders.digits import digits_full
from neumeta_core.builders.fashion import fashion
from neumeta_core.config import TrainConfig
from neumeta_core.structure import build_at
from neumeta_core.train import accuracy


@pytest.mark.parametrize(("build", "low", "high"), [(digits_full, 4, 16), (fashion, 8, 32)])
def test_a_slice_is_the_first_channels_of_every_tensor_at_the_networks_own_shapes(build, low, high):
    torch.manual_seed(0)
    full = build_at(build, high)
    rules = slimmable.shape_rules(build, low, high)
    for width in (high, low + 1, low, low - 2):
        small = build_at(build, width)
        sliced = slimmable.sliced(full.state_dict(), rules, width)
        assert {k: v.shape for k, v in sliced.items()} == {k: v.shape for k, v in small.state_dict().items()}
        small.load_state_dict(sliced)
        conv = full.state_dict()["conv2.conv.weight"]
        assert torch.equal(sliced["conv2.conv.weight"], conv[:width, :width])
    # the whole network at h_max is the full network, and gradients through a slice reach the full tensors
    x = torch.rand(4, 1, 28, 28) if build is fashion else torch.rand(4, 1, 8, 8)
    full.eval()
    params = slimmable.sliced(dict(full.named_parameters()), rules, high)
    assert torch.equal(functional_call(full, params, (x,)), full(x))
    small = build_at(build, low).eval()
    functional_call(small, slimmable.sliced(dict(full.named_parameters()), rules, low), (x,)).sum().backward()
    grad = full.conv1.conv.weight.grad
    assert grad is not None and grad[:low].abs().sum() > 0 and grad[low:].abs().sum() == 0


def test_a_slimmable_network_trains_at_every_width_and_recalibrates_its_statistics(split):
    cfg = TrainConfig(pretrain_epochs=20, batch_size=64, seed=0)
    state = slimmable.train(digits_full, cfg, split, 4, 16, progress=False)
    acc = slimmable.evaluate(digits_full, state, 4, 16, [16, 10, 4, 3], split)
    # measured 97.3 / 94.2 / 66.0 (an h = 4 network trained alone: 61.1); chance is 10 %
    assert acc[16] > 93 and acc[10] > 88 and acc[4] > 45
    model = slimmable.at_width(digits_full, state, 4, 16, 10, split)
    images = split.x_train[: slimmable.RECALIBRATION_IMAGES]
    first = model.conv1.conv(images)
    assert torch.allclose(model.conv1.bn.running_mean, first.mean(dim=(0, 2, 3)), atol=1e-5)
    assert accuracy(model, split.x_test, split.y_test) == acc[10]
    again = slimmable.train(digits_full, cfg, split, 4, 16, progress=False)
    assert all(torch.equal(state[k], again[k]) for k in state)  # reproducible from its seed
