import pytest
import torch

from neumeta_core import checkpoint
from neumeta_core.data import Split, digits


@pytest.fixture(scope="session")
def split() -> Split:
    return digits()


@pytest.fixture(scope="session")
def bundled() -> checkpoint.Checkpoint:
    torch.set_num_threads(2)
    return checkpoint.load(checkpoint.BUNDLED)
