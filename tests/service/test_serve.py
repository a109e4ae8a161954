"""`neumeta serve` and the client commands as real processes: how they start, and how they fail (one line,
exit status 2, nothing loaded first), and `neumeta eval --url` against a running server."""

import json
import os
import socket
import subprocess
import time

import httpx
import onnx
import pytest
import torch

from neumeta_core.checkpoint import BUNDLED
from tests.service.conftest import BIN, free_port, serving, wait_ready

BAD_SETTINGS = [
    ({"NEUMETA_CHECKPOINTS": ""}, "NEUMETA_CHECKPOINTS='': give at least one checkpoint file"),
    ({"NEUMETA_CHECKPOINTS": "/no/such.pt"}, "NEUMETA_CHECKPOINTS='/no/such.pt': /no/such.pt: no such file"),
    ({"NEUMETA_REDIS_URL": "notaurl"}, "NEUMETA_REDIS_URL='notaurl': must be a URL redis://host[:port][/db]"),
    ({"NEUMETA_REDIS_URL": "redis://h:99999/0"}, "its port must be a number in 1..65535"),
    ({"NEUMETA_SAMPLES": "abc"}, "NEUMETA_SAMPLES='abc': Input should be a valid integer"),
    ({"NEUMETA_SAMPLES": "0"}, "NEUMETA_SAMPLES='0': Input should be greater than or equal to 1"),
    ({"NEUMETA_DEVICE": "gpu"}, "NEUMETA_DEVICE='gpu': Input should be 'auto', 'cpu' or 'cuda'"),
    ({"NEUMETA_API_KEYS": "a b"}, "key 1 must be printable ASCII without spaces"),
    ({"NEUMETA_MAX_AGE": "-1"}, "NEUMETA_MAX_AGE='-1': Input should be greater than or equal to 0"),
]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout
    )


def one_line(r: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The one line a clean failure prints; nothing else on stderr, no traceback, exit status 2."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def server():
    with serving() as live:
        yield live.url


def test_download_over_real_http(server, tmp_path):
    r = httpx.get(f"{server}/models?ratio=0.25", timeout=60)
    (tmp_path / "m.onnx").write_bytes(r.content)
    onnx.checker.check_model(str(tmp_path / "m.onnx"))


def test_eval_of_served_models_meets_the_accuracy_floor(server, tmp_path):
    out = tmp_path / "acc.json"
    argv = [str(BIN), "eval", "--url", server, "--json", str(out), "--dtypes", "float32", "int8"]
    subprocess.run(argv, check=True, timeout=300)
    rows = {(r["ratio"], r["dtype"]): r for r in json.loads(out.read_text())}
    assert rows[0.0, "float32"]["width"] == 32 and rows[0.0, "float32"]["accuracy"] >= 97.0
    assert rows[0.75, "float32"]["width"] == 8 and rows[0.75, "float32"]["accuracy"] >= 95.0
    for ratio in (0.0, 0.25, 0.5, 0.75):  # int8 files: the same widths, smaller, close in accuracy
        full, int8 = rows[ratio, "float32"], rows[ratio, "int8"]
        assert int8["width"] == full["width"] and int8["bytes"] < full["bytes"]
        assert abs(int8["accuracy"] - full["accuracy"]) <= 2.0
    assert rows[0.0, "int8"]["bytes"] < 0.4 * rows[0.0, "float32"]["bytes"]  # the weights dominate at h = 32


def test_eval_against_a_server_that_refuses_or_is_not_there(server):
    line = one_line(run("eval", "--url", server, "--ratios", "0.9"), "neumeta eval: GET /models answered 422:")
    assert "ratio must be a number in [0, 0.75]" in line
    gone = f"http://127.0.0.1:{free_port()}"
    assert f"cannot reach {gone}" in one_line(run("eval", "--url", gone), "neumeta eval:")


@pytest.mark.parametrize(("env", "says"), BAD_SETTINGS, ids=[f"{k}={v}" for e, _ in BAD_SETTINGS for k, v in e.items()])
def test_a_bad_setting_is_one_line_before_anything_loads(env, says):
    line = one_line(run("serve", "--port", str(free_port()), env=env, timeout=60), "neumeta serve: NEUMETA_")
    assert says in line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "--port", "99999"], "'99999' is not a TCP port: give a number in 1..65535"),
        (["serve", "--port", "0"], "'0' is not a TCP port"),
        (["serve", "--host", "no.such.host.invalid"], "is not an address to listen on"),
        (["sample", "--width", "99", "-o", "/tmp/x.onnx"], "--width 99 is not served: widths 8..32"),
        (["sample", "--ratio", "0.5", "-o", "/no/such/dir/x.onnx"], "the directory '/no/such/dir' does not exist"),
        (["fetch", "--url", "http://127.0.0.1:1", "--ratio", "0.5", "-o", "/tmp/x.onnx"], "cannot reach"),
        (["eval", "--checkpoint", "/no/such.pt"], "/no/such.pt: no such file"),
        pytest.param(
            ["train", "--device", "cuda", "--out", "/tmp/never.pt"],
            "--device cuda, but no CUDA device is available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
    ],
)
def test_bad_arguments_are_one_line(args, says):
    assert says in one_line(run(*args, timeout=60), f"neumeta {args[0]}")


def test_a_port_in_use_is_said_before_anything_loads(tmp_path):
    """The checkpoint is a FIFO nobody writes: loading it would block forever, so exiting at once proves
    that the port was checked first."""
    fifo = tmp_path / "never.pt"
    os.mkfifo(fifo)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run("serve", "--port", str(port), env={"NEUMETA_CHECKPOINTS": str(fifo)}, timeout=60)
    assert "Address already in use" in one_line(r, f"neumeta serve: cannot listen on 127.0.0.1:{port}")


def test_it_listens_at_once_and_is_ready_once_loaded_and_warm(tmp_path):
    """The checkpoint comes through a FIFO, so loading waits for the test: meanwhile /healthz is 200 and
    /readyz and /models 503 (with Retry-After). Once loaded, the warm-up's full-width file is a hit."""
    fifo = tmp_path / "digits_full.pt"
    os.mkfifo(fifo)
    with serving(ready=False, NEUMETA_CHECKPOINTS=str(fifo)) as live:
        for _ in range(1200):  # until the port answers (a bound against a hang)
            try:
                health = httpx.get(f"{live.url}/healthz", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("the port never answered")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        for path in ("/readyz", "/models?width=20"):
            loading = httpx.get(f"{live.url}{path}", timeout=5)
            assert loading.status_code == 503 and loading.json()["error"] == "not_ready", path
            assert int(loading.headers["retry-after"]) > 0
        with open(fifo, "wb") as f:  # now let it load
            f.write(BUNDLED.read_bytes())
        wait_ready(live.url, live.proc)
        warm = httpx.get(f"{live.url}/models?width=32", timeout=60)
        assert warm.status_code == 200 and warm.headers["x-neumeta-cache"] == "hit"


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04truncated"])
def test_a_corrupt_checkpoint_stops_the_server_in_one_line(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    r = run("serve", "--port", str(free_port()), env={"NEUMETA_CHECKPOINTS": str(path)}, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    ours = [line for line in r.stderr.splitlines() if line.startswith("neumeta serve:")]
    says = f"cannot load a checkpoint: {path} is not a NeuMeta checkpoint (not a torch file, or a truncated one)"
    assert ours == [f"neumeta serve: {says}"]


def test_a_misspelt_setting_is_pointed_out():
    r = run("serve", env={"NEUMETA_LOG_LEVL": "debug", "NEUMETA_SAMPLES": "0"}, timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "neumeta serve: warning: NEUMETA_LOG_LEVL is not a setting: did you mean NEUMETA_LOG_LEVEL? (it is ignored)",
        "neumeta serve: NEUMETA_SAMPLES='0': Input should be greater than or equal to 1",
    ]


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """Only input errors are one line: a ValueError from inside (a bug) propagates, so `neumeta` prints its
    traceback and exits 1."""
    from neumeta_core import files
    from service import cli

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(files, "build", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        cli.main(["sample", "--width", "20", "-o", str(tmp_path / "never.onnx")])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: NEUMETA_DEVICE=cuda is valid here")
def test_cuda_without_a_gpu_is_a_clear_error():
    """What a pod of the gpu overlay prints when it lands on a node without a usable GPU."""
    r = run("serve", "--port", str(free_port()), env={"NEUMETA_DEVICE": "cuda"}, timeout=60)
    assert one_line(r, "neumeta serve:") == "neumeta serve: NEUMETA_DEVICE=cuda but no CUDA device is available"


def test_sample_writes_the_file_the_service_sends(server, tmp_path):
    """`neumeta sample` runs the service's own build: the same request, the same bytes, metadata included."""
    for args, query in (
        (["--width", "21"], {"width": 21}),
        (["--ratio", "0.5", "--format", "safetensors"], {"ratio": 0.5, "format": "safetensors"}),
    ):
        out = tmp_path / "sampled"
        done = run("sample", *args, "-o", str(out))
        assert done.returncode == 0, done.stderr
        served = httpx.get(f"{server}/models", params=query, timeout=120)
        assert out.read_bytes() == served.content
        assert f"spec {served.headers['x-neumeta-spec']}" in done.stdout


def test_a_chunked_body_over_the_limit_is_a_413_over_real_http(server):
    """uvicorn hands a chunked body over in pieces: the limit holds however the body is sent."""

    def chunks():
        yield b'{"ratio": '
        for _ in range(20):
            yield b" " * 1000
        yield b"0.5}"

    r = httpx.post(f"{server}/models", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large" and "16384 bytes" in r.json()["detail"]
    small = httpx.post(f"{server}/models", content=iter([b'{"ratio": ', b"0.5}"]), timeout=120)
    assert small.status_code == 200 and small.headers["x-neumeta-width"] == "16"


def test_train_keeps_its_teacher_and_a_cached_teacher_gives_the_same_hypernetwork(tmp_path):
    """The second run takes the teacher from the cache and ends with the same hypernetwork, bit for bit, as the
    first and as a run that caches nothing."""
    cache = tmp_path / "cache"
    tiny = ["train", "--model", "mlp", "--pretrain-epochs", "2", "--warm-steps", "20", "--steps", "20"]
    outs = []
    for i, extra in enumerate((["--cache", str(cache)], ["--cache", str(cache)], ["--no-cache"])):
        outs.append(tmp_path / f"m{i}.pt")
        done = subprocess.run([str(BIN), *tiny, *extra, "--out", str(outs[-1])], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert ("teacher from" in done.stdout) == (i == 1) and ("teacher trained in" in done.stdout) == (i == 0)
    first, *others = (torch.load(p, weights_only=True) for p in outs)
    assert [o["metadata"].get("teacher_cached") for o in [first, *others]] == [False, True, None]
    for other in others:
        assert first["hypernet_state"].keys() == other["hypernet_state"].keys()
        assert all(torch.equal(v, other["hypernet_state"][k]) for k, v in first["hypernet_state"].items())
    assert len(list(cache.glob("individual-*.pt"))) == 1
