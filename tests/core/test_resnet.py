"""ResNet20 in the CIFAR layout: folding, permutation, export, block-wise training, and the
command line end to end on a tiny data set in the CIFAR-10 format (seconds, not a quality claim)."""

import json

import numpy as np
import pytest
import torch

from neumeta_core import checkpoint, export, permute, resnet, train
from neumeta_core.config import TARGET_PRESETS, HyperNetConfig, TrainConfig
from neumeta_core.data import cifar10
from neumeta_core.targets import family
from service.cli import main
from tests.cifar import write_cifar

PAPER = TARGET_PRESETS["resnet20"]  # layer3.2 generated
STAGE3 = PAPER.__class__(**{**PAPER.to_dict(), "generated_blocks": 3, "skip_init": True})


def _with_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics, so folding has something to fold."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


@pytest.mark.parametrize("cfg", [PAPER, STAGE3], ids=["layer3.2", "stage3"])
def test_folding_batchnorm_keeps_the_function(cfg):
    torch.manual_seed(0)
    trained = _with_statistics(resnet.ResNet20(cfg, 48, bn=True))
    folded = family("resnet20").build(cfg, 48).eval()
    folded.load_state_dict(family("resnet20").fold(trained))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (trained(x) - folded(x)).abs().max() <= 1e-5


def test_generated_tensors_follow_the_setting():
    assert list(family("resnet20").generated_shapes(PAPER, 40)) == [
        "layer3.2.conv1.conv.weight",
        "layer3.2.conv1.conv.bias",
        "layer3.2.conv2.conv.weight",
        "layer3.2.conv2.conv.bias",
    ]
    shapes = family("resnet20").generated_shapes(STAGE3, 40)
    assert len(shapes) == 12 and shapes["layer3.0.conv1.conv.weight"] == (40, 32, 3, 3)
    model = family("resnet20").build(STAGE3, 40)
    assert {n for n, _ in model.named_parameters() if n.endswith("gate")} == {f"layer3.{b}.gate" for b in range(3)}
    total = sum(p.numel() for n, p in model.named_parameters())
    assert total == sum(np.prod(s) for s in shapes.values()) + sum(
        p.numel() for n, p in model.named_parameters() if n not in shapes
    )


def test_every_channel_group_permuted_keeps_the_function_and_lowers_total_variation():
    torch.manual_seed(0)
    model = family("resnet20").build(PAPER, 64).eval()
    groups = family("resnet20").channel_groups(PAPER)
    assert {"stage1.stream", "stage2.stream", "stage3.stream", "layer3.2.hidden"} <= set(groups)
    assert len(groups) == 3 + 9  # three residual streams, nine blocks' hidden channels
    result = permute.smooth(model.state_dict(), groups)
    for name, (before, after) in result.total_variation.items():
        assert after < before, name
    other = family("resnet20").build(PAPER, 64).eval()
    other.load_state_dict(result.state)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - other(x)).abs().max() <= 1e-5
    members = {(t, a) for g in groups.values() for t, a in g.items()}
    assert ("conv1.conv.weight", 1) not in members and ("fc.weight", 0) not in members


@pytest.mark.parametrize("cfg", [PAPER, STAGE3], ids=["layer3.2", "stage3"])
def test_onnx_matches_torch(cfg):
    torch.manual_seed(0)
    model = family("resnet20").build(cfg, 24).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.fill_(0.7)
    body = export.to_onnx("resnet20", model.state_dict())
    sess = export.session(body)
    assert sess.get_inputs()[0].shape == ["batch", 3, 32, 32]
    assert export.verify(body, model, torch.randn(4, 3, 32, 32)) <= 1e-4


def test_blockwise_training_initialises_a_new_block_from_the_one_before():
    torch.manual_seed(0)
    teacher = family("resnet20").build(STAGE3, 64).state_dict()
    tiny = HyperNetConfig(hidden=16, layers=2, frequencies=2)
    trainer = train.HypernetTrainer(STAGE3, tiny, TrainConfig(gate_init=0.0), teacher)
    assert trainer.stages() == [1, 2, 3]
    assert [trainer.names[t] for t in trainer.active] == [
        f"layer3.2.{n}" for n in ("conv1.conv.weight", "conv1.conv.bias", "conv2.conv.weight", "conv2.conv.bias")
    ]
    assert trainer.shared["layer3/2/gate"].item() == 0.0  # SkipInit: a new block starts as identity
    with torch.no_grad():
        for p in trainer.hypernet.mlps[8].parameters():
            p.add_(1.0)  # "train" layer3.2's first MLP
        trainer.shared["layer3/2/gate"].fill_(0.5)
    trainer.enter(2)
    assert len(trainer.active) == 8
    for a, b in zip(trainer.hypernet.mlps[4].parameters(), trainer.hypernet.mlps[8].parameters(), strict=True):
        assert torch.equal(a, b)  # layer3.1 copied from layer3.2
    assert trainer.shared["layer3/1/gate"].item() == 0.0 and trainer.shared["layer3/2/gate"].item() == 0.5
    model = trainer.models[40]  # layer3.0 is not generated yet: it runs the teacher at full width
    assert model.layer3[0].conv1.conv.out_channels == 64 and model.layer3[1].conv1.conv.out_channels == 40


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cifar")
    write_cifar(directory, n_train=32, n_test=16)
    return directory


FAST = ["--pretrain-epochs", "1", "--warm-steps", "3", "--steps", "3", "--batch-size", "16", "--hidden", "32"]


STAGE3_FLAGS = ["--generated-blocks", "3", "--skip-init", "--fc-lr", "7e-5"]
# the whole-network recipe of digits_full (docs/results/experiments.md) on all of stage 3
RECIPE_FLAGS = [
    *("--batchnorm", "--centred", "--no-sizes", "--noise", "1", "--kd-weight", "0", "--lr", "1e-3"),
    *("--samples", "4", "--quadrature", "lattice"),
]


@pytest.mark.parametrize(
    "flags", [[], STAGE3_FLAGS, STAGE3_FLAGS + RECIPE_FLAGS], ids=["layer3.2", "stage3", "stage3-whole-recipe"]
)
def test_train_and_eval_end_to_end_on_cifar_format_data(cifar_dir, tmp_path, capsys, flags):
    out = tmp_path / "resnet20.pt"
    argv = ["train", "--target", "resnet20", "--data-dir", str(cifar_dir), *FAST, "--samples", "2", "--out", str(out)]
    assert main([*argv, *flags]) == 0
    ckpt = checkpoint.load(out)
    blocks = 3 if flags else 1
    per_block = 6 if "--batchnorm" in flags else 4  # BatchNorm kept: scale and shift instead of a bias
    assert ckpt.target.generated_blocks == blocks and len(ckpt.generated_tensors()) == per_block * blocks
    if "--batchnorm" in flags:
        assert ckpt.morph.calibration is not None and ckpt.morph.calibration.shape[1:] == (3, 32, 32)
        assert not ckpt.hypernet.sizes and ckpt.hypernet.centred and ckpt.morph.lattice and ckpt.morph.samples == 4
    if flags:
        assert len(ckpt.metadata["stage_accuracy_full_width"]) == 3  # one stage per block
        assert {f"layer3.{b}.gate" for b in range(3)} <= set(ckpt.morph.fixed)
        assert all(float(ckpt.teacher[f"layer3.{b}.gate"]) == 1.0 for b in range(3))  # L1 pruning's start
    split = cifar10(cifar_dir)
    for width in (64, 20):  # 20: below the trained 32..64
        body = export.to_onnx("resnet20", ckpt.morph.state_dict(width))
        assert export.verify(body, ckpt.morph.synthesize(width), split.x_test[:4]) <= 1e-4
    results = tmp_path / "results"
    argv = ["eval", "--checkpoint", str(out), "--data-dir", str(cifar_dir), "--baselines", "--out", str(results)]
    assert main([*argv, "--ratios", "0", "0.75", "--no-individual"]) == 0
    rows = json.loads((results / "comparison.json").read_text())["rows"]
    assert [r["width"] for r in rows] == [64, 20, 16, 8]
    assert [r["seen_in_training"] for r in rows] == [True, False, False, False]
    assert all(0 <= r["neumeta_k1"] <= 100 and 0 <= r["l1_pruned"] <= 100 for r in rows)
    assert rows[0]["params"] == ckpt.morph.param_count(64) > rows[-1]["params"]
    assert "| γ |" in capsys.readouterr().out


def test_eval_without_a_data_dir_says_what_is_missing(cifar_dir, tmp_path, capsys):
    out = tmp_path / "r.pt"
    assert main(["train", "--target", "resnet20", "--data-dir", str(cifar_dir), *FAST, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neumeta eval: ") and "pass --data-dir" in err and len(err.splitlines()) == 1


def test_the_service_serves_a_resnet20_checkpoint_beside_the_digits_one(cifar_dir, tmp_path):
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    out = tmp_path / "cifar_resnet20.pt"
    argv = ["train", "--target", "resnet20", "--data-dir", str(cifar_dir), *FAST, "--samples", "2", "--out", str(out)]
    assert main(argv) == 0
    settings = Settings(device="cpu", checkpoints=(checkpoint.BUNDLED, out))
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        r = client.post("/models", params={"model": "cifar_resnet20", "ratio": 0.5})
        assert r.status_code == 200, r.text
        assert r.headers["x-neumeta-width"] == "32"
        sess = export.session(r.content)
        assert sess.get_inputs()[0].shape == ["batch", 3, 32, 32]
        x = cifar10(cifar_dir).x_test[:4]
        expected = checkpoint.load(out).morph.synthesize(32)(x).detach().numpy()
        assert np.abs(sess.run(["logits"], {"input": x.numpy()})[0] - expected).max() <= 1e-4
        bad = client.post("/models", params={"model": "cifar_resnet20", "ratio": 0.9})
        assert bad.status_code == 422 and "0.875" in bad.json()["detail"]
        assert client.post("/models", params={"ratio": 0.5}).headers["x-neumeta-width"] == "16"  # default: digits


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_training_on_cuda_gives_a_checkpoint_that_synthesises_the_same_on_cpu(cifar_dir, tmp_path):
    out = tmp_path / "cuda.pt"
    argv = ["train", "--target", "resnet20", "--data-dir", str(cifar_dir), *FAST, "--device", "cuda", "--out", str(out)]
    assert main([*argv, "--generated-blocks", "3", "--skip-init"]) == 0
    on_cpu, on_gpu = checkpoint.load(out), checkpoint.load(out, "cuda")
    for width in (64, 40):
        a, b = on_cpu.morph.state_dict(width), on_gpu.morph.state_dict(width)
        assert max(float((a[k] - b[k].cpu()).abs().max()) for k in a) <= 1e-4
