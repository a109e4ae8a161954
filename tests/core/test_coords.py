import torch

from neumeta_core.coords import encoded_dim, fourier, normalise, raw_coordinates


def reference_coordinates(shapes, t):
    """The slow, obvious loop over channel pairs that the vectorised version must equal."""
    shape = shapes[t]
    s0, s1 = shape[0], shape[1] if len(shape) > 1 else 1
    rows = []
    for o in range(s0):
        for i in range(s1):
            rows.append([t, o, i, len(shapes), s0, s1])
    return torch.tensor(rows, dtype=torch.float32)


def test_raw_coordinates_match_reference_loop():
    for width in (1, 5, 24, 32):
        shapes = [(width, 32, 3, 3), (width,), (32, width, 3, 3), (32,)]  # digits_cnn's generated block
        for t in range(len(shapes)):
            assert torch.equal(raw_coordinates(shapes, t), reference_coordinates(shapes, t))


def test_raw_coordinates_cover_every_channel_pair_once():
    shapes = [(7, 3, 3, 3), (7,), (5, 7)]
    assert raw_coordinates(shapes, 0).shape == (21, 6)
    assert raw_coordinates(shapes, 1).shape == (7, 6)
    pairs = {tuple(r[1:3].int().tolist()) for r in raw_coordinates(shapes, 2)}
    assert pairs == {(o, i) for o in range(5) for i in range(7)}


def test_normalise_gives_relative_positions_and_sizes():
    # conv_a at width h = 16 of a 32-channel stream, N = 32: (t/T, o/h, i/32, T/32, h/32, 32/32)
    raw = torch.tensor([[0.0, 3.0, 8.0, 4.0, 16.0, 32.0]])
    expected = torch.tensor([[0.0, 3 / 16, 8 / 32, 4 / 32, 16 / 32, 1.0]])
    assert torch.allclose(normalise(raw, 32), expected)


def test_fourier_encoding_layout():
    x = torch.rand(10, 6)
    enc = fourier(x, 3)
    assert enc.shape == (10, encoded_dim(3)) == (10, 42)
    assert torch.equal(enc[:, :6], x)
    # band k = 1, dimension j = 2: sin then cos of 2 * pi * x_j
    k, j = 1, 2
    col = 6 + k * 12 + j * 2
    assert torch.allclose(enc[:, col], torch.sin(2.0**k * torch.pi * x[:, j]))
    assert torch.allclose(enc[:, col + 1], torch.cos(2.0**k * torch.pi * x[:, j]))
