import pytest

from neumeta_core import checkpoint, train
from neumeta_core.config import HyperNetConfig, TargetConfig, TrainConfig

TINY_TARGET = TargetConfig(model="neumeta_core.builders.digits:digits_cnn", max_width=8, train_min_width=4, min_width=2)
TINY_NET = HyperNetConfig(hidden=16, layers=2, frequencies=2)
TINY_TRAIN = TrainConfig(pretrain_epochs=1, warm_steps=30, steps=10, batch_size=32, permute="all")


@pytest.fixture(scope="session")
def tiny(split, tmp_path_factory):
    result = train.train(TINY_TARGET, TINY_NET, TINY_TRAIN, split, progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return result, path, checkpoint.save(path, result, TINY_TRAIN)
