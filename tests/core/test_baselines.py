import pytest
import torch

from neumeta_core import baselines, checkpoint
from tests.core.conftest import TINY_TARGET


def test_l1_pruning_keeps_the_largest_channels_in_order(tiny):
    _, path, _ = tiny
    ckpt = checkpoint.load(path)
    assert ckpt.teacher is not None
    norms = ckpt.teacher["block.conv_a.weight"].abs().flatten(1).sum(1)
    state = baselines.l1_pruned(ckpt, 3)
    keep = sorted(norms.topk(3).indices.tolist())
    assert torch.equal(state["block.conv_a.weight"], ckpt.teacher["block.conv_a.weight"][keep])
    assert torch.equal(state["block.conv_b.weight"], ckpt.teacher["block.conv_b.weight"][:, keep])
    assert torch.equal(state["block.conv_b.bias"], ckpt.teacher["block.conv_b.bias"])
    full = baselines.l1_pruned(ckpt, TINY_TARGET.max_width)
    assert all(torch.equal(full[k], ckpt.teacher[k]) for k in ckpt.teacher)  # nothing pruned at h_max


def test_compare_reports_every_series_per_width(tiny, split):
    result, path, _ = tiny
    ckpt = checkpoint.load(path)
    rows = baselines.compare(ckpt, split, [8, 3], [1, 2], seeds=[0, 1], progress=False)
    assert [r["width"] for r in rows] == [8, 3]
    assert rows[0]["seen_in_training"] and not rows[1]["seen_in_training"]
    assert rows[0]["params"] == ckpt.morph.param_count(8)
    for r in rows:
        assert {"neumeta_k1", "neumeta_k2", "l1_pruned", "individual"} <= set(r)
        assert all(0.0 <= r[c] <= 100.0 for c in ("neumeta_k1", "neumeta_k2", "l1_pruned", "individual"))
    assert rows[0]["l1_pruned"] == pytest.approx(result.teacher_accuracy)  # h_max: the teacher, run by onnxruntime
    for r in rows:  # the mean over two individually trained nets, each reproducible from its seed
        assert r["individual"] == pytest.approx(sum(r["individual_runs"]) / 2) and len(r["individual_runs"]) == 2
    assert baselines.individual(ckpt, split, 3, seed=1, progress=False) == rows[1]["individual_runs"][1]
