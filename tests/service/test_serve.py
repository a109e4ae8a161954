"""`neumeta serve` as a real process, and `neumeta eval --url` against it."""

import json
import os
import subprocess
import urllib.request

import onnx
import pytest
import torch

from tests.service.conftest import BIN, free_port, serving


@pytest.fixture(scope="module")
def server():
    with serving() as live:
        yield live.url


def test_download_over_real_http(server, tmp_path):
    req = urllib.request.Request(f"{server}/models?ratio=0.25", method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        (tmp_path / "m.onnx").write_bytes(r.read())
    onnx.checker.check_model(str(tmp_path / "m.onnx"))


def test_eval_of_served_models_meets_the_accuracy_floor(server, tmp_path):
    out = tmp_path / "acc.json"
    subprocess.run([str(BIN), "eval", "--url", server, "--json", str(out)], check=True, timeout=120)
    rows = {r["ratio"]: r for r in json.loads(out.read_text())}
    assert rows[0.0]["width"] == 32 and rows[0.0]["accuracy"] >= 97.0
    assert rows[0.75]["width"] == 8 and rows[0.75]["accuracy"] >= 95.0


@pytest.mark.parametrize("content", [None, b"not a checkpoint", b"PK\x03\x04truncated"])
def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    r = subprocess.run(
        [str(BIN), "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={**os.environ, "NEUMETA_CHECKPOINTS": str(path)},
        timeout=60,
    )
    assert r.returncode == 2
    assert f"cannot load checkpoint {path}" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) <= 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: NEUMETA_DEVICE=cuda is valid here")
def test_cuda_without_a_gpu_is_a_clear_error():
    """What a pod of the gpu overlay prints when it lands on a node without a usable GPU."""
    r = subprocess.run(
        [str(BIN), "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={**os.environ, "NEUMETA_DEVICE": "cuda"},
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "neumeta serve: NEUMETA_DEVICE=cuda but no CUDA device is available"
