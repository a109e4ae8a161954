"""`neumeta serve` as a real process on a free loopback port, and `neumeta eval --url` against it."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import onnx
import pytest

BIN = Path(sys.executable).parent / "neumeta"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NEUMETA_DEVICE": "cpu"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"server did not become ready: {proc.stdout.read().decode() if proc.stdout else ''}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_download_over_real_http(server, tmp_path):
    req = urllib.request.Request(f"{server}/models?ratio=0.25", method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        (tmp_path / "m.onnx").write_bytes(r.read())
    onnx.checker.check_model(str(tmp_path / "m.onnx"))


def test_eval_of_served_models_meets_the_accuracy_floor(server, tmp_path):
    out = tmp_path / "acc.json"
    subprocess.run([str(BIN), "eval", "--url", server, "--json", str(out)], check=True, timeout=120)
    import json

    rows = {r["ratio"]: r for r in json.loads(out.read_text())}
    assert rows[0.0]["width"] == 32 and rows[0.0]["accuracy"] >= 97.0
    assert rows[0.75]["width"] == 8 and rows[0.75]["accuracy"] >= 95.0


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    r = subprocess.run(
        [str(BIN), "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={**os.environ, "NEUMETA_CHECKPOINT": str(tmp_path / "nope.pt")},
        timeout=60,
    )
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
