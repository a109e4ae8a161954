"""Data-parallel training: `neumeta train --nproc 2` (torchrun, gloo on the CPU) trains what one process trains on
the same global batch, to float rounding; killed (every process, SIGKILL) or stopped (SIGTERM) in the middle,
`--resume` ends bitwise where the uninterrupted two-process run ends; rank 0 alone writes the state, the log and the
checkpoint, and says once that it stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch

from neumeta_core import checkpoint
from neumeta_core.resume import state_path
from tests.processes import BIN, kill_tree

# the MLP has no BatchNorm: with it, each rank's batch statistics are its shard's, and the runs differ by more
# than rounding (the module's note in neumeta_core/distributed.py)
TINY = [
    *("--model", "mlp", "--seed", "3", "--threads", "1", "--no-cache", "--batch-size", "64"),
    *("--pretrain-epochs", "4", "--warm-steps", "60", "--steps", "80", "--save-every", "10", "--log-every", "10"),
    *("--hidden", "16", "--samples", "2", "--max-width", "16", "--train-min-width", "8", "--min-width", "4"),
]
# one process against two on the same global batch, relative to each tensor's largest entry: the two half-batch
# gradients averaged by the all-reduce round differently from one full-batch gradient (float32, ~1e-7 a step),
# and Adam's normalisation carries that through 106 steps (measured: 3e-6)
TOLERANCE = 1e-4


def run(out, *extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(BIN), "train", *TINY, *extra, "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def hypernet(path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path).morph.hypernet.state_dict()


def log(path) -> list[dict]:
    return [json.loads(line) for line in path.with_name(path.name + ".log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "one.pt"
    run(out)
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "two.pt"
    done = run(out, "--nproc", "2")
    assert "x 2 processes" in done.stderr and done.stdout.count("wrote ") == 1  # rank 0 alone reports
    return out


def test_two_gloo_ranks_train_what_one_process_trains_on_the_same_global_batch(one, two):
    a, b = hypernet(one), hypernet(two)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) for k in a)
    assert worst <= TOLERANCE
    assert checkpoint.load(one).metadata["processes"] == 1 and checkpoint.load(two).metadata["processes"] == 2
    first, second = log(one), log(two)  # one log, written by rank 0: the same reports, the same losses
    assert [(r["phase"], r["step"]) for r in first] == [(r["phase"], r["step"]) for r in second]
    assert {r["phase"] for r in first} == {"pretrain h=16", "warm start", "hypernet"}
    # the probe: the teacher at its own width, the hypernetwork at the smallest trained width, none while warming
    assert {(r["phase"], r["probe_width"]) for r in first} == {
        ("pretrain h=16", 16),
        ("warm start", None),
        ("hypernet", 8),
    }
    for x, y in zip(first, second, strict=True):
        assert abs(x["loss"] - y["loss"]) <= TOLERANCE * max(1.0, abs(x["loss"]))
        assert x["steps"] == y["steps"] and y["steps_per_second"] > 0  # timing-ok: reported, never bounded


def start(out, *extra: str) -> subprocess.Popen[str]:
    argv = [str(BIN), "train", *TINY, "--nproc", "2", *extra, "--out", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def when_saved_in(out, phase: str, proc: subprocess.Popen[str]) -> tuple[str, int]:
    """Wait until the run's saved state is inside `phase`, past its second save there."""
    seen = None
    while proc.poll() is None:
        try:
            state = torch.load(state_path(out), map_location="cpu", weights_only=True)
            seen = state["phase"], int(state["step"])
        except Exception:  # not yet written, or being replaced
            seen = None
        if seen is not None and seen[0] == phase and seen[1] >= 20:
            return seen
        time.sleep(0.01)
    raise AssertionError(f"the run ended before it was stopped in {phase}: {seen}")


def test_two_ranks_killed_and_stopped_resume_bitwise_to_the_uninterrupted_run(two, tmp_path):
    """Every process SIGKILLed in the teacher's phase (a lost node), then SIGTERM in the task phase (saved,
    status 143, one message), each followed by --resume: the hypernetwork is the one of the run never stopped."""
    out = tmp_path / "run.pt"
    proc = start(out)
    when_saved_in(out, "pretrain", proc)
    kill_tree(proc.pid)
    proc.wait(timeout=60)
    assert not out.exists() and state_path(out).exists()
    proc = start(out, "--resume")
    when_saved_in(out, "task", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.count("stopped by SIGTERM at task step") == 1 and not out.exists()
    run(out, "--nproc", "2", "--resume")
    a, b = hypernet(two), hypernet(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not state_path(out).exists()
    resumed = log(out)  # appended to by each resumed run: it reaches the end of every phase
    assert resumed[-1]["phase"] == "hypernet" and resumed[-1]["step"] == resumed[-1]["steps"] == 80


def test_a_batch_that_does_not_split_into_the_processes_is_refused_in_one_line(tmp_path):
    argv = [str(BIN), "train", *TINY, "--nproc", "2", "--batch-size", "63", "--out", str(tmp_path / "x.pt")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == (
        "neumeta train: --batch-size 63 does not split into 2 equal shards: give a multiple of 2 "
        "(the batch is the global one, each process takes its share)\n"
    )
