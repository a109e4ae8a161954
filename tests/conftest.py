import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from neumeta_core import checkpoint
from neumeta_core.data import Split, digits
from tests.processes import RedisServer

# every cache a command keeps (the teacher and baseline runs of neumeta train and eval): this session's own,
# inherited by the commands the tests start, never the user's
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="neumeta-tests-cache-")
# the service the tests start serves the digits bundle (small, fast, its figures known) unless a test says otherwise
os.environ.setdefault("NEUMETA_CHECKPOINTS", str(checkpoint.BUNDLED))
# torch's thread count is process-wide and the commands the tests call in-process set it (neumeta train --threads,
# neumeta eval, the service's settings). Training is bitwise the same only at one thread count, so a test that
# compares two trainings must not see what the tests before it left: with pytest-xdist any file may run before it.
# Under xdist each worker takes its share of the cores (2 workers of 2 threads on 2 cores: 10.7-11.0 min against 9.5)
THREADS = max(1, torch.get_num_threads() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[None]:
    """Every test, and the session fixtures its setup makes, starts at THREADS."""
    yield
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def split() -> Split:
    return digits()


@pytest.fixture(scope="session")
def bundled() -> checkpoint.Checkpoint:
    return checkpoint.load(checkpoint.BUNDLED)


@pytest.fixture(scope="session")
def mlp_checkpoint(split, tmp_path_factory):
    """A small, quickly trained MLP checkpoint: every one of its layers is generated."""
    from neumeta_core import train
    from neumeta_core.config import HyperNetConfig, TargetConfig, TrainConfig

    target = TargetConfig(model="neumeta_core.builders.digits:mlp", max_width=16, train_min_width=8, min_width=4)
    cfg = TrainConfig(pretrain_epochs=20, warm_steps=150, steps=150, batch_size=64)
    result = train.train(target, HyperNetConfig(hidden=64, layers=3, frequencies=4), cfg, split, progress=False)
    path = tmp_path_factory.mktemp("mlp") / "mlp.pt"
    checkpoint.save(path, result, cfg)
    return path


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of our own on a free loopback port (never the machine's 6379)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
