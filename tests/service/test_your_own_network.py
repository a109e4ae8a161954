"""Bring your own network, as a user does it: `neumeta train --model FILE.py:FUNCTION` on digits with a short
schedule, `neumeta serve` with the checkpoint (a real process that never imports the user's file), and
`POST /models?ratio=0.5` gives an ONNX file that onnxruntime runs and that equals the torch network."""

import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch

from neumeta_core import checkpoint, export
from neumeta_core.data import digits
from neumeta_core.train import model_at
from tests.service.conftest import BIN, serving

# with BatchNorm, a residual add and a depthwise convolution; no module of the repository knows it
OURS_ONLY = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.a = nn.Conv2d(1, w, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(w)
        self.dw = nn.Conv2d(w, w, 3, padding=1, groups=w)
        self.bn_dw = nn.BatchNorm2d(w)
        self.fc = nn.Linear(w, 10)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(x)))
        x = torch.relu(x + self.bn_dw(self.dw(x)))
        return self.fc(torch.nn.functional.max_pool2d(x, 2).mean(dim=(2, 3)))


def make(width):
    return Tiny(width)
"""

SHORT = [
    *("--pretrain-epochs", "2", "--warm-steps", "30", "--steps", "30", "--hidden", "32", "--samples", "2"),
    *("--max-width", "16", "--train-min-width", "8", "--min-width", "4"),
]


@pytest.fixture(params=["example", "temp-dir"])
def model_ref(request, tmp_path):
    if request.param == "example":
        return "examples/separable.py:build"
    path = tmp_path / "user_code" / "tiny_net.py"
    path.parent.mkdir()
    path.write_text(OURS_ONLY)
    return f"{path}:make"


def test_train_serve_and_download_your_own_network(model_ref, tmp_path):
    out = tmp_path / "mine.pt"
    train = subprocess.run(
        [str(BIN), "train", "--model", model_ref, "--dataset", "digits", *SHORT, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr
    assert "pretrain" in train.stderr  # the progress bars
    probe = "import sys, neumeta_core.checkpoint as c; c.load(sys.argv[1]); print(sorted(m for m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, check=True)
    modules = loaded.stdout
    assert "neumeta_core.train" not in modules and "torch_pruning" not in modules and "neumeta_user" not in modules
    with serving(NEUMETA_CHECKPOINTS=str(out)) as live:
        r = httpx.post(f"{live.url}/models", params={"ratio": 0.5}, timeout=120)
        assert r.status_code == 200, r.text
        width = int(r.headers["x-neumeta-width"])
        info = httpx.get(f"{live.url}/models", timeout=30).json()[0]
    assert width == 8 and info["builder"] == model_ref and info["input"]["shape"] == ["batch", 1, 8, 8]
    x = digits().x_test[:64]
    got = export.session(r.content).run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model_at(checkpoint.load(out), width)(x).numpy()
    assert export.relative(got, expected) <= 1e-4
    assert np.mean(got.argmax(1) == expected.argmax(1)) == 1.0
