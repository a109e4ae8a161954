"""ResNet20 in the CIFAR layout, both settings, through the generic path: derived structure, permutation,
export, and the command line end to end on a tiny data set in the CIFAR-10 format (seconds, not a
quality claim)."""

import json

import numpy as np
import pytest
import torch

from neumeta_core import checkpoint, export, permute, structure
from neumeta_core.builders.resnet import resnet20, resnet20_stage3
from neumeta_core.data import cifar10
from neumeta_core.train import model_at
from service.cli import main
from tests.cifar import write_cifar

CIFAR = (3, 32, 32)


def test_generated_tensors_follow_the_setting():
    paper, _, _ = structure.derive(resnet20, "resnet20", 64, [16, 40, 64], CIFAR, 10)
    assert paper.generated == [
        "layer3.2.conv1.conv.weight",
        "layer3.2.conv1.bn.weight",
        "layer3.2.conv1.bn.bias",
        "layer3.2.conv2.conv.weight",
    ]
    whole, _, _ = structure.derive(resnet20_stage3, "resnet20_stage3", 64, [16, 40, 64], CIFAR, 10)
    shapes = whole.shapes(40)
    assert len(shapes) == 12 and shapes["layer3.0.conv1.conv.weight"] == (40, 32, 3, 3)
    assert len(whole.folds) == 21  # every conv's BatchNorm folded into it in the served graph


def test_every_channel_group_permuted_keeps_the_function_and_lowers_total_variation():
    torch.manual_seed(0)
    model = resnet20(64).eval()
    groups = structure.channel_groups(model, CIFAR)
    assert len(groups) == 3 + 9  # three residual streams, nine blocks' hidden channels
    model = structure._randomise(model, 0)
    result = permute.smooth(model.state_dict(), groups)
    for name, (before, after) in result.total_variation.items():
        assert after < before, name
    other = resnet20(64).eval()
    other.load_state_dict(result.state)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - other(x)).abs().max() <= 1e-4 * model(x).abs().max()
    members = {(t, a) for g in groups.values() for t, a, _ in g}
    assert ("conv1.conv.weight", 1) not in members and ("fc.weight", 0) not in members


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cifar")
    write_cifar(directory, n_train=32, n_test=16)
    return directory


FAST = ["--pretrain-epochs", "1", "--warm-steps", "3", "--steps", "3", "--batch-size", "16", "--hidden", "32"]
# the whole-network recipe of digits_full (docs/results/experiments.md) on all of stage 3
RECIPE_FLAGS = [
    *("--centred", "--no-sizes", "--noise", "1", "--kd-weight", "0", "--lr", "1e-3"),
    *("--samples", "4", "--quadrature", "lattice", "--fixed-lr", "7e-5"),
]


def train(model: str, cifar_dir, out, flags=()) -> None:
    argv = ["train", "--model", model, "--data-dir", str(cifar_dir), *FAST, "--samples", "2", "--out", str(out)]
    assert main([*argv, *flags]) == 0


@pytest.fixture(scope="module")
def resnet20_pt(cifar_dir, tmp_path_factory):
    """resnet20 (the paper's setting) trained once on the tiny set with K = 2, for the tests that only read it
    (about 35 s a training on a 2-core machine)."""
    out = tmp_path_factory.mktemp("resnet") / "cifar_resnet20.pt"
    train("resnet20", cifar_dir, out)
    return out


@pytest.mark.parametrize(
    "model, flags", [("resnet20", []), ("resnet20_stage3", RECIPE_FLAGS)], ids=["layer3.2", "stage3-whole-recipe"]
)
def test_train_and_eval_end_to_end_on_cifar_format_data(cifar_dir, tmp_path, capsys, model, flags, request):
    if flags:
        out = tmp_path / "resnet20.pt"
        train(model, cifar_dir, out, flags)
    else:
        out = request.getfixturevalue("resnet20_pt")
    ckpt = checkpoint.load(out)
    assert len(ckpt.generated_tensors()) == (12 if flags else 4)
    assert ckpt.calibration is not None and ckpt.calibration.shape[1:] == CIFAR
    assert ckpt.data.labels[0] == "airplane" and ckpt.data.input_shape == CIFAR
    if flags:
        assert not ckpt.hypernet.sizes and ckpt.hypernet.centred and ckpt.morph.lattice and ckpt.morph.samples == 4
        assert "fc.weight" in ckpt.morph.fixed and not torch.equal(
            ckpt.morph.fixed["fc.weight"], ckpt.teacher["fc.weight"]
        )
    split = cifar10(cifar_dir)
    x = split.x_test[:4]
    for width in (64, 20):  # 20: below the trained 32..64
        body = export.to_onnx(ckpt.graph(width), ckpt.morph.state_dict(width))
        with torch.no_grad():
            assert export.verify(body, model_at(ckpt, width)(x).numpy(), x.numpy()) <= 1e-4
    results = tmp_path / "results"
    argv = ["eval", "--checkpoint", str(out), "--data-dir", str(cifar_dir), "--baselines", "--out", str(results)]
    assert main([*argv, "--ratios", "0", "0.75", "--no-individual"]) == 0
    rows = json.loads((results / "comparison.json").read_text())["rows"]
    assert [r["width"] for r in rows] == [64, 20, 16, 8]
    assert [r["seen_in_training"] for r in rows] == [True, False, False, False]
    assert all(0 <= r["neumeta_k1"] <= 100 and 0 <= r["l1_pruned"] <= 100 for r in rows)
    assert rows[0]["params"] == ckpt.morph.param_count(64) > rows[-1]["params"]
    assert "| γ |" in capsys.readouterr().out


def test_eval_without_a_data_dir_says_what_is_missing(resnet20_pt, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(resnet20_pt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neumeta eval: ") and "pass --data-dir" in err and len(err.splitlines()) == 1


def test_the_service_serves_a_resnet20_checkpoint_beside_the_digits_one(cifar_dir, resnet20_pt):
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    settings = Settings(device="cpu", checkpoints=(checkpoint.BUNDLED, resnet20_pt))
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        r = client.post("/models", params={"model": "cifar_resnet20", "ratio": 0.5})
        assert r.status_code == 200, r.text
        assert r.headers["x-neumeta-width"] == "32"
        sess = export.session(r.content)
        assert sess.get_inputs()[0].shape == ["batch", 3, 32, 32]
        x = cifar10(cifar_dir).x_test[:4]
        expected = model_at(checkpoint.load(resnet20_pt), 32)(x).detach().numpy()
        assert np.abs(sess.run(["logits"], {"input": x.numpy()})[0] - expected).max() <= 1e-4
        bad = client.post("/models", params={"model": "cifar_resnet20", "ratio": 0.9})
        assert bad.status_code == 422 and "0.875" in bad.json()["detail"]
        assert client.post("/models", params={"ratio": 0.5}).headers["x-neumeta-width"] == "16"  # default: digits
        info = {m["name"]: m for m in client.get("/models").json()}["cifar_resnet20"]
        assert info["dataset"] == "cifar10" and info["input"]["shape"] == ["batch", 3, 32, 32]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_training_on_cuda_gives_a_checkpoint_that_synthesises_the_same_on_cpu(cifar_dir, tmp_path):
    out = tmp_path / "cuda.pt"
    argv = ["train", "--model", "resnet20_stage3", "--data-dir", str(cifar_dir), *FAST, "--device", "cuda"]
    assert main([*argv, "--out", str(out)]) == 0
    on_cpu, on_gpu = checkpoint.load(out), checkpoint.load(out, "cuda")
    for width in (64, 40):
        a, b = on_cpu.morph.state_dict(width), on_gpu.morph.state_dict(width)
        assert max(float((a[k].float() - b[k].cpu().float()).abs().max()) for k in a) <= 1e-4
