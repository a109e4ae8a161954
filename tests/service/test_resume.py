"""`neumeta train` survives: killed with SIGKILL or stopped by SIGTERM in the middle of a phase, `--resume`
continues from the last training state and ends bitwise where a run that was never stopped ends (CPU, same
seed); a damaged or foreign state is refused in one line."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch

from neumeta_core import checkpoint
from neumeta_core.resume import state_path
from tests.processes import BIN

TINY = [
    *("--model", "digits_full", "--seed", "3", "--threads", "1", "--no-cache"),
    *("--pretrain-epochs", "3", "--warm-steps", "300", "--steps", "300", "--save-every", "10"),
    *("--hidden", "16", "--samples", "2", "--max-width", "8", "--train-min-width", "4", "--min-width", "3"),
]


def hypernet(path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path).morph.hypernet.state_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "whole.pt"
    done = subprocess.run([str(BIN), "train", *TINY, "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert not state_path(out).exists()  # a finished run leaves no state behind
    return out


def phase_of(path) -> tuple[str, int] | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # being written, or not a state: not yet one to look at
        return None
    return state["phase"], int(state["step"])


def start_and_stop(out, phase: str, how: signal.Signals, resume: bool = False) -> tuple[int, str]:
    """A run (resumed, with `resume`) stopped with `how` once its saved state is inside `phase` (past its first
    save there): its exit status and its stderr."""
    log = out.with_name("stderr.txt")
    argv = [str(BIN), "train", *TINY, "--out", str(out), *(["--resume"] if resume else [])]
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    seen = None
    while proc.poll() is None:
        seen = phase_of(state_path(out)) if state_path(out).exists() else None
        if seen is not None and seen[0] == phase and seen[1] >= 20:
            proc.send_signal(how)
            break
        time.sleep(0.01)
    proc.wait(timeout=300)
    assert seen is not None and seen[0] == phase, f"the run ended before it was stopped in {phase}: {seen}"
    return proc.returncode, log.read_text()


def test_stopped_in_every_phase_and_resumed_each_time_the_run_is_bitwise_the_uninterrupted_one(uninterrupted, tmp_path):
    """SIGKILL in the teacher's phase, SIGTERM in the warm start (saved, with a message and status 143), SIGKILL in
    the task phase, each followed by --resume: the hypernetwork, its table and its permutation are the ones of
    the run that was never stopped."""
    out = tmp_path / "run.pt"
    status, _ = start_and_stop(out, "pretrain", signal.SIGKILL)
    assert status == -signal.SIGKILL and not out.exists() and state_path(out).exists()
    status, stderr = start_and_stop(out, "warm", signal.SIGTERM, resume=True)
    assert status == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at warm step" in stderr and "--resume" in stderr
    status, _ = start_and_stop(out, "task", signal.SIGKILL, resume=True)
    assert status == -signal.SIGKILL and not out.exists()
    resumed = subprocess.run(
        [str(BIN), "train", *TINY, "--out", str(out), "--resume"], capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr
    a, b = hypernet(uninterrupted), hypernet(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first, again = checkpoint.load(uninterrupted), checkpoint.load(out)
    assert first.accuracy == again.accuracy and first.permutation == again.permutation
    assert not state_path(out).exists()  # a finished run deletes its state


def test_a_damaged_missing_or_foreign_state_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run.pt"

    def resume(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN), "train", *TINY, *extra, "--out", str(out), "--resume"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    missing = resume()
    assert missing.returncode == 2 and "no training state at" in missing.stderr
    state_path(out).write_bytes(b"not a state")
    damaged = resume()
    assert damaged.returncode == 2 and "is not a readable training state" in damaged.stderr
    assert len(damaged.stderr.strip().splitlines()) == 1
    state_path(out).unlink()
    start_and_stop(out, "warm", signal.SIGKILL)
    foreign = resume("--lr", "0.01")  # another recipe
    assert foreign.returncode == 2 and "was written by another run (it differs in train)" in foreign.stderr
    assert len(foreign.stderr.strip().splitlines()) == 1
