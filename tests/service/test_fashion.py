"""The Fashion-MNIST benchmark's paths, smoke-tested on a tiny subset of the real data set (Debian's
dataset-fashion-mnist, which `make test` installs): train the `fashion` builder, compare it with its baselines
(individual, L1, slimmable), serve it and run the downloaded file as a device would (pixels / 255, float32)."""

import json
import subprocess

import httpx
import numpy as np
import onnx
import pytest
import torch

from neumeta_core import baselines, checkpoint, data, export
from neumeta_core.builders.fashion import fashion
from neumeta_core.structure import build_at
from neumeta_core.train import accuracy, model_at
from tests.core.test_data import write_idx
from tests.service.conftest import BIN, serving

TINY = [
    *("--pretrain-epochs", "1", "--warm-steps", "10", "--steps", "10", "--slim-epochs", "1"),
    *("--hidden", "16", "--samples", "2"),
    *("--max-width", "8", "--train-min-width", "4", "--min-width", "3", "--batch-size", "32"),
    *("--train-stride", "1", "--held-out", "6"),  # every width of 4..8 drawn but 6, as the bundle's recipe does
]


def test_the_installed_data_set_is_the_default_for_idx():
    split = data.load("idx", None)  # no --data-dir: Debian's /usr/share/datasets/fashion-mnist
    assert split.x_train.shape == (60_000, 1, 28, 28) and split.x_test.shape == (10_000, 1, 28, 28)
    assert split.labels[0] == "T-shirt/top" and split.labels[9] == "Ankle boot"
    assert float(split.x_train.min()) == 0.0 and float(split.x_train.max()) == 1.0  # pixels / 255
    assert np.bincount(split.y_test.numpy()).tolist() == [1000] * 10


@pytest.fixture(scope="module")
def tiny_fashion(tmp_path_factory):
    """The first 320 training and 160 test images of the real data set, as the four IDX files."""
    full = data.load("idx", None)
    root = tmp_path_factory.mktemp("data") / "fashion-mnist"
    root.mkdir()
    for part, x, y, n in (("train", full.x_train, full.y_train, 320), ("t10k", full.x_test, full.y_test, 160)):
        write_idx(root / f"{part}-images-idx3-ubyte", (x[:n, 0] * 255).round().numpy().astype(np.uint8))
        write_idx(root / f"{part}-labels-idx1-ubyte", y[:n].numpy())
    (root / "labels.txt").write_text("\n".join(full.labels) + "\n")  # a subset: its labels are no longer known
    return root


def test_train_compare_serve_and_run_the_fashion_network(tiny_fashion, tmp_path):
    out = tmp_path / "fashion.pt"
    argv = [str(BIN), "train", "--model", "fashion", "--data-dir", str(tiny_fashion), *TINY, "--out", str(out)]
    train = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    ckpt = checkpoint.load(out)
    assert ckpt.target.dataset == "idx" and ckpt.data.input_shape == (1, 28, 28)
    assert ckpt.data.labels[0] == "T-shirt/top"
    assert set(ckpt.generated_tensors()) >= {"conv1.conv.weight", "conv4.conv.weight", "fc.weight", "fc.bias"}
    assert ckpt.target.held_out == (6,) and ckpt.target.trained_widths() == [8, 7, 5, 4]

    results, cache = tmp_path / "results", tmp_path / "runs"
    compare = [str(BIN), "eval", "--checkpoint", str(out), "--data-dir", str(tiny_fashion), "--baselines"]
    compare += ["--ratios", "0", "0.5", "--widths", "3", "--individual-seeds", "1", "--cache", str(cache)]
    compare += ["--out", str(results), "--jobs", "2"]
    first = subprocess.run(compare, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    table = json.loads((results / "comparison.json").read_text())
    rows = table["rows"]
    assert [r["width"] for r in rows] == [8, 4, 3]
    for r in rows:
        assert all(0 <= r[c] <= 100 for c in ("neumeta_k1", "neumeta_k2", "individual", "slimmable", "l1_pruned"))
    full = build_at(fashion, 8)  # the slimmable network stores its full-width parameters, BatchNorm unfolded
    assert table["storage"]["slimmable_bytes"] == 4 * sum(p.numel() for p in full.parameters())
    assert table["times"]["slimmable_seconds"] > 0
    meta = ckpt.metadata  # the teacher was trained beside train() (cached): its time counts too
    both = pytest.approx(meta["train_seconds"] + meta["teacher_seconds"])
    assert table["times"]["hypernetwork_seconds"] == both  # timing-ok: the accounting of recorded times
    assert "universally slimmable" in (results / "comparison.md").read_text()
    assert table["title"].endswith("trained on widths 4..8 except 6")
    assert "4 trained" in first.stderr  # three individual runs and the slimmable one
    second = subprocess.run(compare, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "0 trained, 4 from" in second.stderr
    again = json.loads((results / "comparison.json").read_text())["rows"]
    assert [(r["individual"], r["slimmable"]) for r in again] == [(r["individual"], r["slimmable"]) for r in rows]

    with serving(NEUMETA_CHECKPOINTS=str(out)) as live:
        r = httpx.post(f"{live.url}/models", params={"ratio": 0.5}, timeout=120)
        assert r.status_code == 200, r.text
        info = httpx.get(f"{live.url}/models", timeout=30).json()[0]
        below = httpx.post(f"{live.url}/models", params={"width": 2}, timeout=30)
    assert info["dataset"] == "fashion-mnist" and info["labels"][9] == "Ankle boot"
    assert info["input"] == {"name": "input", "dtype": "float32", "shape": ["batch", 1, 28, 28]}
    assert info["widths_allowed"] == {"min": 3, "max": 8, "step": 1}
    assert info["widths_trained"] == {"min": 4, "max": 8, "step": 1, "held_out": [6]}
    assert below.status_code == 422 and "3" in below.json()["detail"] and "8" in below.json()["detail"]
    meta = {p.key: p.value for p in onnx.load_from_string(r.content).metadata_props}
    assert meta["neumeta.dataset"] == "fashion-mnist" and json.loads(meta["neumeta.labels"]) == info["labels"]
    assert json.loads(meta["neumeta.input"]) == info["input"] and meta["neumeta.model"] == "fashion"
    x = data.load("idx", tiny_fashion).x_test[:32]  # what a device feeds: pixels / 255
    got = export.session(r.content).run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model_at(ckpt, 4)(x).numpy()
    assert export.relative(got, expected) <= 1e-4


def test_train_from_the_bundles_teacher_skips_pretraining(tiny_fashion, tmp_path):
    """`neumeta train --teacher-from` starts from the teacher an earlier checkpoint was trained from (its channel
    order restored): no pretraining phase, and the teacher it reports is that network, scored on this data."""
    bundle = checkpoint.BUNDLED.with_name("fashion.pt")
    out = tmp_path / "again.pt"
    schedule = ["--warm-steps", "3", "--steps", "3", "--slim-epochs", "0", "--hidden", "16"]
    schedule += ["--min-width", "28", "--train-min-width", "28", "--held-out", "30"]  # few widths to measure
    argv = [str(BIN), "train", "--model", "fashion", "--data-dir", str(tiny_fashion), *schedule]
    train = subprocess.run([*argv, "--teacher-from", str(bundle), "--out", str(out)], capture_output=True, text=True)
    assert train.returncode == 0, train.stderr
    assert "pretrain" not in train.stderr and f"teacher from {bundle}" in train.stdout
    ckpt = checkpoint.load(out)
    assert ckpt.metadata["teacher_from"] == checkpoint.load(bundle).digest
    teacher, _ = baselines.teacher_from(bundle, ckpt.target)
    split = data.load("idx", tiny_fashion)
    assert ckpt.metadata["teacher_accuracy"] == pytest.approx(accuracy(teacher, split.x_test, split.y_test))
    other = subprocess.run(  # another network's teacher: one line, status 2, nothing written
        [*argv, "--teacher-from", str(bundle.with_name("digits_full.pt")), "--out", str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
    )
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert "does not match neumeta_core.builders.fashion:fashion at width 32" in other.stderr
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("held", [["8"], ["4"], ["9"], ["2"]])
def test_a_held_out_width_outside_the_trained_range_is_refused_before_training(held, tmp_path):
    """Only a width strictly between the smallest trained width and h_max can be held out: those two are always
    drawn (the sandwich rule's ends). One line, exit status 2, before any data is read or anything trained."""
    out = tmp_path / "x.pt"
    argv = [str(BIN), "train", "--model", "fashion", *TINY, "--held-out", *held, "--out", str(out)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"--held-out {held[0]}: a held-out width must lie strictly between --train-min-width (4)" in r.stderr
    assert not out.exists()


def test_make_run_serves_the_fashion_bundle_first_and_the_digits_bundle_beside_it(monkeypatch):
    """The default set (no NEUMETA_CHECKPOINTS: what `make run` serves): the Fashion-MNIST bundle is the default
    model, its served range is what GET /models lists and what a 422 names, and a downloaded file scores on the
    10,000 test images what the checkpoint's table says."""
    from neumeta_core.builders import FASHION, SERVED

    monkeypatch.delenv("NEUMETA_CHECKPOINTS", raising=False)
    bundle = checkpoint.load(FASHION)
    low, high = bundle.target.min_width, bundle.target.max_width
    assert SERVED[0] == FASHION and low < bundle.target.train_min_width  # gamma 0.75 is below the trained range
    with serving() as live:
        models = httpx.get(f"{live.url}/models", timeout=30).json()
        r = httpx.get(f"{live.url}/models", params={"ratio": 0.75}, timeout=120)
        below = httpx.get(f"{live.url}/models", params={"width": low - 1}, timeout=30)
        digits = httpx.get(f"{live.url}/models", params={"model": "digits_full", "ratio": 0.5}, timeout=120)
    assert [m["name"] for m in models] == ["fashion", "digits_full"]
    assert models[0]["dataset"] == "fashion-mnist" and models[0]["widths_allowed"] == {
        "min": low,
        "max": high,
        "step": 1,
    }
    assert below.status_code == 422 and f"{low}..{high}" in below.json()["detail"]
    assert r.status_code == 200 and r.headers["X-NeuMeta-Width"] == str(round(high * 0.25))
    assert digits.status_code == 200 and digits.headers["X-NeuMeta-Width"] == "16"
    split = data.load("idx", None)
    session = export.session(r.content)
    logits = np.concatenate(
        [session.run(["logits"], {"input": split.x_test[i : i + 1000].numpy()})[0] for i in range(0, 10_000, 1000)]
    )
    served = 100.0 * float((logits.argmax(1) == split.y_test.numpy()).mean())
    assert abs(served - bundle.accuracy[round(high * 0.25)]) <= 0.05  # the file is the checkpoint's network
