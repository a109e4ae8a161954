import pytest
import torch

from neumeta_core import permute, structure
from neumeta_core.builders.digits import digits_cnn


def test_every_group_permuted_keeps_the_function_and_lowers_total_variation():
    torch.manual_seed(0)
    model = digits_cnn(24).eval()
    groups = structure.channel_groups(model, (1, 8, 8))
    assert len(groups) == 3  # conv1's outputs; the residual stream; the block's hidden channels
    result = permute.smooth(model.state_dict(), groups)
    for name, order in result.orders.items():
        first, axis, factor = groups[name][0]
        size = model.state_dict()[first].shape[axis] // factor
        assert sorted(order) == list(range(size)) and order != list(range(size))
        before, after = result.total_variation[name]
        assert after < before, name
    other = digits_cnn(24).eval()
    other.load_state_dict(result.state)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        assert (model(x) - other(x)).abs().max() <= 1e-5


def test_input_and_class_axes_never_move():
    groups = structure.channel_groups(digits_cnn(24), (1, 8, 8))
    members = {(t, a) for g in groups.values() for t, a, _ in g}
    assert ("conv1.weight", 1) not in members  # image channels
    assert ("fc.weight", 0) not in members and ("fc.bias", 0) not in members  # classes
    assert ("block.conv_a.weight", 0) in members and ("block.conv_b.weight", 1) in members


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40])
def test_shortest_path_recovers_points_on_a_line(n):
    positions = torch.randperm(n).float()[:, None]
    order = permute.shortest_path(torch.cdist(positions, positions, p=1))
    walked = positions[order, 0].tolist()
    assert sorted(order) == list(range(n))
    assert walked in (sorted(walked), sorted(walked, reverse=True))


def test_shortest_path_has_one_direction():
    """A path and its reverse are equally short; the search may return either, the result may not."""
    torch.manual_seed(0)
    x = torch.randn(40, 16)
    dist = torch.cdist(x, x, p=1)
    paths = [permute.shortest_path(dist, seconds=s) for s in (0.2, 0.5)]
    assert paths[0] == paths[1] and paths[0][0] < paths[0][-1]
    assert sorted(paths[0]) == list(range(40))
