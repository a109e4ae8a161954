import pytest
import torch

from neumeta_core.config import HyperNetConfig
from neumeta_core.hypernet import HyperNetwork, lattice_points
from neumeta_core.plan import Plan

CFG = HyperNetConfig(hidden=16, layers=2, frequencies=2)
SHAPES = [(6, 4, 3, 3), (6,), (4, 6, 3, 3), (4,)]
# synthesize() against forward(): the same arithmetic in another order (a separable first layer, ELU through exp2,
# the mean over K before the last layer), so equal to float32 rounding, relative to each tensor's scale
ROUNDING = 1e-6


def rel(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The largest difference of a tensor relative to its largest entry, over the tensors."""
    pairs = [(a.detach(), b.detach()) for a, b in zip(got, expected, strict=True)]
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in pairs)


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


def test_lattice_places_the_k_sets_evenly_and_draws_nothing():
    for k in (2, 4, 5, 9):
        points = lattice_points(k)
        assert points.shape == (k, 2) and bool((points.abs() < 0.5).all())
        for axis in (0, 1):  # in each direction a midpoint rule: one point per strip of width 1/k
            assert torch.allclose(points[:, axis].sort().values, (torch.arange(k) + 0.5) / k - 0.5)
    torch.manual_seed(0)
    net = HyperNetwork(CFG, len(SHAPES), norm=8)
    with torch.no_grad():
        a = net(SHAPES, samples=4, noise=1.0, generator=torch.Generator().manual_seed(3), lattice=True)
        b = net(SHAPES, samples=4, noise=1.0, generator=torch.Generator().manual_seed(4), lattice=True)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # the generator plays no part
        assert not torch.equal(a[0], net(SHAPES)[0])  # not the clean set
        grouped = net.synthesize(SHAPES, 4, 1.0, None, lattice=True)
    assert rel(grouped, a) <= ROUNDING


def test_grouped_synthesis_equals_the_per_tensor_forward(bundled):
    """synthesize() (tensors of one query grid batched, rows in tiles) computes what forward() does, tensor for
    tensor."""
    hyper = bundled.morph.hypernet
    for width in (4, 27, 32):
        shapes = list(bundled.morph.shapes(width).values())
        with torch.no_grad():
            loop = hyper(shapes, 5, 1.0, torch.Generator().manual_seed(0))
            grouped = hyper.synthesize(shapes, 5, 1.0, torch.Generator().manual_seed(0))
        assert [t.shape for t in grouped] == [t.shape for t in loop]
        assert rel(grouped, loop) <= ROUNDING


def test_grouping_follows_query_counts_not_positions():
    """Tensors of one query grid are batched together even when they are not neighbours."""
    torch.manual_seed(0)
    shapes = [(6, 4, 3, 3), (6,), (6, 4, 3, 3), (6,), (4,), (3, 8, 3, 3)]  # grids 6x4, 6x1, 6x4, 6x1, 4x1, 3x8
    net = HyperNetwork(CFG, len(shapes), norm=8)
    plan = Plan(net, shapes, 3, 0.5, torch.Generator().manual_seed(1), lattice=False)
    assert [g.members for g in plan.groups] == [(0, 2), (1, 3), (4,), (5,)]
    with torch.no_grad():
        loop = net(shapes, 3, 0.5, torch.Generator().manual_seed(1))
        grouped = net.synthesize(shapes, 3, 0.5, torch.Generator().manual_seed(1))
    assert rel(grouped, loop) <= ROUNDING


def test_bfloat16_synthesis_is_close_and_unknown_precision_is_refused(bundled):
    hyper = bundled.morph.hypernet
    shapes = list(bundled.morph.shapes(32).values())
    full = hyper.synthesize(shapes, 2, 1.0, torch.Generator().manual_seed(0))
    half = hyper.synthesize(shapes, 2, 1.0, torch.Generator().manual_seed(0), precision="bfloat16")
    for a, b in zip(full, half, strict=True):
        assert b.dtype == torch.float32
        assert 0 < float((a - b).abs().max()) <= 0.02 * float(a.abs().max())  # rounded, not broken
    with pytest.raises(ValueError, match="precision must be one of"):
        hyper.synthesize(shapes, precision="fp8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_synthesis_matches_cpu_and_never_waits_for_the_device():
    from neumeta_core import checkpoint

    on_cpu, on_gpu = checkpoint.load(checkpoint.BUNDLED), checkpoint.load(checkpoint.BUNDLED, "cuda")
    shapes = list(on_cpu.morph.shapes(32).values())
    expected = on_cpu.morph.hypernet.synthesize(shapes, 5, 1.0, torch.Generator().manual_seed(0))
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation inside raises
    try:
        got = on_gpu.morph.hypernet.synthesize(shapes, 5, 1.0, torch.Generator().manual_seed(0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(t.device.type == "cuda" for t in got)
    assert max(float((a - b.cpu()).abs().max()) for a, b in zip(expected, got, strict=True)) <= 1e-4
    from neumeta_core.hypernet import set_precision

    try:
        for precision in ("tf32", "bfloat16"):
            set_precision(precision)  # once per process in the service; per precision here
            gen = torch.Generator().manual_seed(0)
            low = on_gpu.morph.hypernet.synthesize(shapes, 5, 1.0, gen, precision=precision)
            assert max(float((a - b.cpu()).abs().max()) for a, b in zip(expected, low, strict=True)) <= 0.05
        with pytest.raises(RuntimeError, match="set_precision"):  # the flag says bfloat16's, not tf32's
            on_gpu.morph.hypernet.synthesize(shapes, precision="tf32")
    finally:
        set_precision("float32")


def test_area_resampling_keeps_means_and_fan_in_sums_and_is_the_identity_at_full_width():
    from neumeta_core.hypernet import area, resampled

    for n, big in ((3, 8), (5, 5), (7, 32), (8, 32)):
        mix = area(n, big)
        assert torch.allclose(mix.sum(dim=1), torch.ones(n))  # each channel is a mean of the cells it covers
        assert torch.allclose(mix.sum(dim=0), torch.full((big,), n / big))  # every full-width cell counted once
    torch.manual_seed(0)
    w = torch.randn(8, 6, 3, 3)
    assert torch.equal(resampled(w, (8, 6, 3, 3)), w)
    x = torch.randn(3)  # an input constant over each pair of input channels: the sum over inputs is kept
    fine = w.sum(dim=(2, 3)) @ x.repeat_interleave(2)
    assert torch.allclose(fine, resampled(w, (8, 3, 3, 3)).sum(dim=(2, 3)) @ x, atol=1e-5)
    out = resampled(w, (4, 6, 3, 3))  # output channels: the mean of each pair
    assert torch.allclose(out, w.reshape(4, 2, 6, 3, 3).mean(dim=1), atol=1e-6)
    with pytest.raises(ValueError, match="cannot resample"):
        resampled(w, (4, 6))


def test_jittered_cells_move_the_inner_edges_by_at_most_half_a_cell_and_keep_every_sum():
    from neumeta_core.hypernet import area, jittered_edges, resampled

    gen = torch.Generator().manual_seed(0)
    for n in (3, 7, 13):
        edges = jittered_edges(n, 1.0, gen)
        exact = torch.arange(n + 1, dtype=torch.float64) / n
        assert edges[0] == 0 and edges[-1] == 1 and bool((edges[1:] > edges[:-1]).all())
        assert float((edges - exact).abs().max()) <= 0.5 / n and not torch.equal(edges, exact)
        mix = area(n, 32, edges)
        assert torch.allclose(mix.sum(dim=1), torch.ones(n))  # still means of what each cell covers
    w = torch.randn(6, 32)  # (out, in): a constant input keeps its fan-in sum whatever the cells
    a = resampled(w, (6, 13), 1.0, torch.Generator().manual_seed(1))
    b = resampled(w, (6, 13), 1.0, torch.Generator().manual_seed(2))
    assert not torch.allclose(a, b)
    for moved in (a, b):
        assert torch.allclose(moved.sum(dim=1), w.sum(dim=1), atol=1e-4)


def test_a_grid_hypernetwork_adds_the_resampled_grid_in_forward_and_in_synthesis():
    from neumeta_core.hypernet import resampled

    cfg = HyperNetConfig(hidden=16, layers=2, frequencies=2, grid=True)
    full = [(6, 4, 3, 3), (6,), (4, 6, 3, 3), (4,)]
    with pytest.raises(ValueError, match="full-width shapes"):
        HyperNetwork(cfg, len(full), norm=6)
    torch.manual_seed(0)
    net = HyperNetwork(cfg, len(full), norm=6, full_shapes=full)
    plain = HyperNetwork(HyperNetConfig(hidden=16, layers=2, frequencies=2), len(full), norm=6)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("grids.")})
    with torch.no_grad():
        for grid in net.grids:
            grid.normal_()
        shapes = [(3, 4, 3, 3), (3,), (4, 3, 3, 3), (4,)]
        loop = net(shapes)
        grouped = net.synthesize(shapes)
        mlp_only = plain(shapes)
    for t, shape in enumerate(shapes):
        expected = mlp_only[t] + resampled(net.grids[t], shape)
        assert torch.allclose(loop[t], expected, atol=1e-6)
        assert rel([grouped[t]], [expected]) <= ROUNDING
    assert not torch.allclose(loop[0], mlp_only[0])
