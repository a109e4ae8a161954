"""The synthesis plan: groups, a separable first layer, tiles, and the ELU through exp2 (neumeta_core/plan.py)."""

import pytest
import torch

from neumeta_core.config import HyperNetConfig
from neumeta_core.hypernet import HyperNetwork
from neumeta_core.plan import Plan, _elu, separable
from tests.core.test_hypernet import ROUNDING, rel

CFG = HyperNetConfig(hidden=16, layers=3, frequencies=2, centred=True)
SHAPES = [(6, 4, 3, 3), (6,), (6,), (5, 6, 3, 3), (5,), (10, 5), (10,)]


def net(cfg: HyperNetConfig = CFG) -> HyperNetwork:
    torch.manual_seed(0)
    hyper = HyperNetwork(cfg, len(SHAPES), norm=8)
    with torch.no_grad():
        for mlp in hyper.mlps:
            mlp.scales.uniform_(0.1, 0.9)  # residual scales that differ between the members of a group
    return hyper


def test_elu_through_exp_equals_torchs_elu():
    x = torch.cat([torch.linspace(-90, 90, 20001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, -1e-8, 1e-8, 200.0])])
    expected = torch.nn.functional.elu(x)
    got = x.clone()
    _elu(got, torch.empty_like(got))
    assert float((got - expected).abs().max()) <= 1.2e-7  # e^x - 1 against expm1: float32 rounding near 0
    assert bool(torch.isfinite(got).all()) and torch.equal(got[x > 0], x[x > 0])


@pytest.mark.parametrize(
    ("samples", "noise", "lattice", "split"),
    [(1, 0.0, False, True), (4, 0.5, True, True), (4, 0.5, False, False), (1, 0.5, False, False)],
)
def test_the_first_layer_is_separable_only_where_the_sets_differ_by_one_offset(samples, noise, lattice, split):
    """No noise or a lattice: the o and i terms apart; random noise moves every query alone: all queries encoded."""
    hyper = net()
    gen = torch.Generator().manual_seed(2)
    plan = Plan(hyper, SHAPES, samples, noise, gen, lattice)
    assert separable(samples, noise, lattice) is split
    assert all(g.separable is (split and g.s0 > 1 and g.s1 > 1) for g in plan.groups)
    performed = plan.flops(CFG.hidden, CFG.layers, CFG.output_dim)
    assert (performed < hyper.flops(SHAPES, samples)) is (split or samples > 1)  # K > 1: the last layer once
    assert performed <= hyper.flops(SHAPES, samples)
    with torch.no_grad():
        loop = hyper(SHAPES, samples, noise, torch.Generator().manual_seed(2), lattice=lattice)
    assert rel(hyper.synthesize(SHAPES, samples, noise, torch.Generator().manual_seed(2), lattice=lattice), loop) <= (
        ROUNDING
    )


@pytest.mark.parametrize("tile", [1, 7, 24, 50, 500])
@pytest.mark.parametrize("lattice", [True, False])
def test_tiles_of_any_size_cover_every_row_once_and_give_the_same_weights(tile, lattice):
    """Pieces split sets and runs of o across tiles (o-runs of one set, whole sets); the result does not depend
    on where the tiles fall."""
    hyper = net()
    args = (SHAPES, 3, 0.5)
    plan = Plan(hyper, *args, torch.Generator().manual_seed(5), lattice, tile=tile)
    covered = {g: torch.zeros(len(grp.members), plan.rows(grp), dtype=torch.int) for g, grp in enumerate(plan.groups)}
    for pieces in plan.tiles:
        sizes = [plan.size(p) for p in pieces]
        assert [p.at for p in pieces] == [sum(g * r for g, r in sizes[:i]) for i in range(len(pieces))]
        assert len(pieces) == 1 or sum(g * r for g, r in sizes) <= tile
        for piece, (_, rows) in zip(pieces, sizes, strict=True):
            start = plan.first(piece)
            covered[piece.group][:, start : start + rows] += 1
    assert all(bool((c == 1).all()) for c in covered.values())
    if tile < 24:
        assert any(len(grp.members) == 1 and plan.rows(grp) > tile for grp in plan.groups)  # split pieces exist
    whole = hyper.synthesize(*args, torch.Generator().manual_seed(5), lattice=lattice)
    tiled = hyper.synthesize(*args, torch.Generator().manual_seed(5), lattice=lattice, plan=plan)
    assert rel(tiled, whole) <= ROUNDING


def test_work_buffers_reused_across_widths_leave_nothing_behind(bundled):
    """The thread's scratch buffers serve every plan: a small width after a large one gives its own weights."""
    morph = bundled.morph
    first = morph.generate(8)
    morph.generate(32)
    again = morph.generate(8)
    assert all(torch.equal(first[n], again[n]) for n in first)


def test_a_bfloat16_plan_is_close_to_float32():
    hyper = net()
    exact = hyper.synthesize(SHAPES, 4, 0.5, None, lattice=True)
    low = hyper.synthesize(SHAPES, 4, 0.5, None, precision="bfloat16", lattice=True)
    assert all(t.dtype == torch.float32 for t in low)
    assert 0 < rel(low, exact) <= 5e-2
