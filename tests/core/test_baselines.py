import json
from dataclasses import replace

import pytest
import torch

from neumeta_core import baselines, checkpoint, slimmable
from neumeta_core.builders.digits import digits_cnn
from neumeta_core.errors import InputError
from neumeta_core.structure import build_at
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


def test_compare_reports_every_series_per_width_and_caches_every_run(tiny, split, tmp_path, monkeypatch):
    result, path, _ = tiny
    ckpt = checkpoint.load(path)
    runs = baselines.Runs(tmp_path / "runs")
    rows, times = baselines.compare(ckpt, split, [8, 3], [1, 2], seeds=[0, 1], progress=False, runs=runs)
    assert [r["width"] for r in rows] == [8, 3]
    assert rows[0]["seen_in_training"] and not rows[1]["seen_in_training"]
    assert rows[0]["params"] == ckpt.morph.param_count(8)
    series = ("neumeta_k1", "neumeta_k2", "l1_pruned", "individual", "slimmable")
    for r in rows:
        assert all(0.0 <= r[c] <= 100.0 for c in series)
    assert rows[0]["l1_pruned"] == pytest.approx(result.teacher_accuracy)  # h_max: the teacher, run by onnxruntime
    for r in rows:  # the mean over two individually trained nets, each reproducible from its seed
        assert r["individual"] == pytest.approx(sum(r["individual_runs"]) / 2) and len(r["individual_runs"]) == 2
    again = baselines.individual(ckpt.target.model, ckpt.train, split, 3, seed=1, progress=False)
    assert again["accuracy"] == rows[1]["individual_runs"][1]
    assert times["slimmable_seconds"] > 0 and times["individual_seconds_per_seed"] > 0
    assert times["slimmable_bytes"] == 4 * sum(p.numel() for p in build_at(digits_cnn, 8).parameters())
    assert len(list(runs.root.glob("individual-*.json"))) == 4 and len(list(runs.root.glob("slimmable-*.pt"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(baselines, "pretrain", no_training)
    monkeypatch.setattr(slimmable, "train", no_training)
    cached, _ = baselines.compare(ckpt, split, [8, 3], [1, 2], seeds=[0, 1], progress=False, runs=runs)
    assert [{k: v for k, v in r.items() if "seconds" not in k} for r in cached] == [
        {k: v for k, v in r.items() if "seconds" not in k} for r in rows
    ]
    # a width the slimmable run was not evaluated at comes from its stored weights; only the new individual
    # runs are trained
    monkeypatch.undo()
    more, _ = baselines.compare(ckpt, split, [8, 5], [1], seeds=[0], progress=False, runs=runs)
    assert more[0]["slimmable"] == rows[0]["slimmable"] and more[0]["individual"] == rows[0]["individual_runs"][0]
    assert len(list(runs.root.glob("individual-*.json"))) == 5
    record = json.loads(next(runs.root.glob("slimmable-*.json")).read_text())
    assert set(record["result"]["accuracy"]) == {"8", "3", "5"} and record["key"]["low"] == 4


def test_a_run_is_cached_by_what_determines_it(tiny, split, tmp_path):
    _, path, _ = tiny
    ckpt = checkpoint.load(path)
    runs = baselines.Runs(tmp_path)
    plan = baselines.Plan(ckpt.target, ckpt.train, split, [8], [0], runs)
    other_recipe = baselines.Plan(ckpt.target, replace(ckpt.train, pretrain_epochs=2), split, [8], [0], runs)
    assert plan.individual[(8, 0)][0] != other_recipe.individual[(8, 0)][0]
    assert plan.slim[0] != other_recipe.slim[0]
    shuffled = baselines.Plan(ckpt.target, ckpt.train, replace(split, y_train=split.y_train.flip(0)), [8], [0], runs)
    assert plan.individual[(8, 0)][0] != shuffled.individual[(8, 0)][0]
    assert baselines.Plan(ckpt.target, ckpt.train, split, [8], [0], runs).individual == plan.individual  # stable
    # the hypernetwork's own settings are not part of a baseline's key
    other_hypernet = baselines.Plan(ckpt.target, replace(ckpt.train, steps=7, lr=0.5), split, [8], [0], runs)
    assert other_hypernet.individual == plan.individual and other_hypernet.slim == plan.slim


def test_runs_in_worker_processes_equal_runs_here(tiny, split, tmp_path):
    _, path, _ = tiny
    ckpt = checkpoint.load(path)
    runs = baselines.Runs(tmp_path)
    plan = baselines.Plan(ckpt.target, ckpt.train, split, [8, 5], [0], runs, slimmable=False)
    plan.run(jobs=2, progress=False)
    torch.set_num_threads(1)  # as in each worker (restored after the test: conftest)
    here = baselines.individual(ckpt.target.model, ckpt.train, split, 5, seed=0, progress=False)
    assert plan.individual_result(5, 0)["accuracy"] == here["accuracy"]
    assert plan.individual_result(5, 0)["params"] == here["params"]


def test_the_teacher_is_the_individual_run_at_h_max_trained_once(tiny, split, tmp_path, monkeypatch):
    """neumeta train's teacher and the individual baseline at h_max with the same seed are one run: cached with
    its weights by the first, found by both afterwards; damaged weights are trained again."""
    _, path, _ = tiny
    ckpt = checkpoint.load(path)
    runs = baselines.Runs(tmp_path)
    model, record, cached = baselines.teacher(ckpt.target, ckpt.train, split, runs, progress=False)
    assert not cached and record["params"] == sum(p.numel() for p in model.parameters())
    plan = baselines.Plan(ckpt.target, ckpt.train, split, [ckpt.target.max_width], [ckpt.train.seed], runs, False)
    assert plan.missing() == []  # the baseline sweep takes it as its own
    assert plan.individual_result(ckpt.target.max_width, ckpt.train.seed) == record

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher was trained again")

    monkeypatch.setattr(baselines, "pretrain", no_training)
    again, same, cached = baselines.teacher(ckpt.target, ckpt.train, split, runs, progress=False)
    assert cached and same == record and not again.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    monkeypatch.undo()
    weights = next(tmp_path.glob("individual-*.pt"))
    weights.write_bytes(b"not a torch file")
    retrained, _, cached = baselines.teacher(ckpt.target, ckpt.train, split, runs, progress=False)
    assert not cached
    pairs = zip(model.state_dict().values(), retrained.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_a_checkpoints_teacher_comes_back_in_its_own_channel_order(tiny, split, tmp_path):
    """teacher_from undoes the permutation the checkpoint keeps its teacher in: what comes back is, bit for bit, the
    teacher the same recipe and seed pretrain (the tiny run's permutation moves channels, so this is not trivial)."""
    _, path, digest = tiny
    ckpt = checkpoint.load(path)
    assert any(order != sorted(order) for order in ckpt.permutation.values())
    model, origin = baselines.teacher_from(path, ckpt.target)
    trained, _, _ = baselines.teacher(ckpt.target, ckpt.train, split, baselines.Runs(tmp_path), progress=False)
    assert origin["from"] == digest and not model.training
    pairs = zip(model.state_dict().items(), trained.state_dict().values(), strict=True)
    assert all(torch.equal(mine, theirs) for (_, mine), theirs in pairs)


def _rewritten(path, out, change):
    payload = torch.load(path, map_location="cpu", weights_only=True)
    change(payload)
    torch.save(payload, out)
    return out


@pytest.mark.parametrize(
    "change,says",
    [
        (lambda p: p.pop("teacher_state"), "the checkpoint holds no teacher"),
        (lambda p: p.update(permutation={"old.name": p["permutation"].popitem()[1]}), "channel groups its network"),
    ],
)
def test_a_checkpoint_without_a_usable_teacher_is_refused(tiny, tmp_path, change, says):
    _, path, _ = tiny
    bad = _rewritten(path, tmp_path / "bad.pt", change)
    with pytest.raises(InputError, match=says):
        baselines.teacher_from(bad, TINY_TARGET)


def test_another_networks_teacher_is_refused(tiny):
    _, path, _ = tiny
    with pytest.raises(InputError, match=r"does not match .* at width 12"):
        baselines.teacher_from(path, replace(TINY_TARGET, max_width=12))
