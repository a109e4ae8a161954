import torch

from neumeta_core.config import HyperNetConfig
from neumeta_core.hypernet import HyperNetwork

CFG = HyperNetConfig(hidden=16, layers=2, frequencies=2)
SHAPES = [(6, 4, 3, 3), (6,), (4, 6, 3, 3), (4,)]


def test_shapes_and_input_channel_scaling():
    torch.manual_seed(0)
    net = HyperNetwork(CFG, len(SHAPES), norm=8)
    out = net(SHAPES)
    assert [tuple(t.shape) for t in out] == SHAPES
    # conv weights use the middle 9 of 9 outputs divided by S1; a bias uses output 0 unscaled
    from neumeta_core.coords import fourier, normalise, raw_coordinates

    x = fourier(normalise(raw_coordinates(SHAPES, 2), 8), CFG.frequencies)
    raw = net.mlps[2](x)
    assert torch.allclose(out[2], raw.reshape(4, 6, 3, 3) / 6)
    xb = fourier(normalise(raw_coordinates(SHAPES, 1), 8), CFG.frequencies)
    assert torch.allclose(out[1], net.mlps[1](xb)[:, 0])


def test_noise_is_reproducible_and_clean_sample_is_first():
    torch.manual_seed(0)
    net = HyperNetwork(CFG, len(SHAPES), norm=8)
    a = net(SHAPES, samples=4, noise=1.0, generator=torch.Generator().manual_seed(3))
    b = net(SHAPES, samples=4, noise=1.0, generator=torch.Generator().manual_seed(3))
    c = net(SHAPES, samples=4, noise=1.0, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    clean = net(SHAPES)
    assert not torch.equal(a[0], clean[0])  # the average includes noisy samples
