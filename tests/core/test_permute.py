import torch

from neumeta_core import permute
from neumeta_core.config import TargetConfig
from neumeta_core.targets import digits_cnn, family


def test_permutation_keeps_the_function_and_lowers_total_variation():
    torch.manual_seed(0)
    model = digits_cnn(width=24).eval()
    state = model.state_dict()
    axes = family("digits_cnn").hidden_group(TargetConfig())
    order = permute.smooth_order(state, axes)
    assert sorted(order) == list(range(24))
    permuted = permute.apply_order(state, axes, order)
    other = digits_cnn(width=24).eval()
    other.load_state_dict(permuted)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        assert (model(x) - other(x)).abs().max() <= 1e-5
    tv = permute.total_variation
    assert tv(permute.channel_features(permuted, axes)) < tv(permute.channel_features(state, axes))


def test_shortest_path_recovers_points_on_a_line():
    positions = torch.tensor([5.0, 0.0, 3.0, 1.0, 4.0, 2.0])[:, None]
    order = permute.shortest_path(torch.cdist(positions, positions, p=1))
    walked = positions[order, 0].tolist()
    assert walked in (sorted(walked), sorted(walked, reverse=True))
