import pytest
import torch

from neumeta_core.sampling import ratio_for, width_for
from neumeta_core.train import model_at


@pytest.mark.parametrize(
    ("ratio", "width"),
    [(0.0, 32), (0.25, 24), (0.5, 16), (0.75, 8), (0.875, 4), (1 - 23.5 / 32, 24), (1 - 23.49 / 32, 23)],
)
def test_width_for(ratio, width):
    assert width_for(ratio, 32) == width


def test_ratio_round_trip():
    for width in range(1, 33):
        assert width_for(ratio_for(width, 32), 32) == width


def test_synthesis_is_deterministic(bundled):
    morph = bundled.morph
    for width in (8, 21):
        a, b = morph.state_dict(width), morph.state_dict(width)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_synthesized_model_has_requested_width(bundled):
    model = model_at(bundled, 12)
    assert model.conv2.conv.weight.shape == (12, 12, 3, 3) and model.conv3.conv.weight.shape == (24, 12, 3, 3)
    bn = sum(p.numel() for n, p in model.named_parameters() if ".bn." in n)  # folded: one bias per channel
    assert bundled.morph.param_count(12) == sum(p.numel() for p in model.parameters()) - bn // 2
    with pytest.raises(ValueError, match="outside the supported range"):
        bundled.morph.state_dict(bundled.target.max_width + 1)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--ratio", "2"], "--ratio 2 is not served: widths 8..32, ratios 0..0.75"),
        (["--ratio", "0.95"], "--ratio 0.95 gives width 2, which is not served: widths 8..32, ratios 0..0.75"),
        (["--ratio", "0.8"], "--ratio 0.8 gives width 6, which is not served: widths 8..32, ratios 0..0.75"),
        (["--width", "40"], "--width 40 is not served: widths 8..32, ratios 0..0.75"),
    ],
)
def test_sample_with_a_size_out_of_range_is_one_line_and_status_2(argv, says, tmp_path, capsys):
    from service.cli import main

    out = tmp_path / "m.onnx"
    assert main(["sample", *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"neumeta sample: {says}\n" and not out.exists()


def test_plans_are_kept_per_width_and_give_the_same_weights(bundled, monkeypatch):
    from neumeta_core import sampling

    morph = bundled.morph
    shapes = list(morph.shapes(13).values())
    gen = torch.Generator().manual_seed(morph.seed)
    direct = morph.hypernet.synthesize(shapes, morph.samples, morph.noise, gen, lattice=morph.lattice)
    cached = morph.generate(13)
    assert all(torch.equal(a, b) for a, b in zip(direct, cached.values(), strict=True))
    assert morph.plan(13, morph.samples) is morph.plan(13, morph.samples)  # made once
    one = morph.plan(9, 1).nbytes()
    monkeypatch.setattr(sampling, "PLAN_CACHE_BYTES", one)
    morph.plan(10, 1)  # over the budget: the least recently used go first
    assert (10, 1) in morph._plans and (13, morph.samples) not in morph._plans
