"""A tiny data set written in the published CIFAR-10 python format, for tests that need one."""

import pickle

import numpy as np


def write_cifar(directory, n_train=20, n_test=10, seed=0):
    """data_batch_1, data_batch_2 and test_batch of random images and labels in `directory`."""
    rng = np.random.default_rng(seed)
    batches = {"data_batch_1": n_train, "data_batch_2": n_train, "test_batch": n_test}
    for name, n in batches.items():
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)
    return batches
