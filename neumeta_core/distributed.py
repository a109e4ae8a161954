"""Data-parallel training: one run on N processes started by torchrun, each a shard of every batch.

Every rank draws the same global batch (the same seeds, the same data order) and keeps the rows of its shard,
rank r the r-th of N equal slices; the networks are wrapped in DistributedDataParallel, which averages the
gradients over the ranks in backward, so a step sees the gradient of the whole global batch and the learning rate
stays the recipe's: N divides the work of a step, not its arithmetic. (Where the network has BatchNorm, its batch
statistics are those of the shard, as in any DDP run without SyncBatchNorm: runs with N and 1 ranks then differ by
more than float rounding.) The hypernetwork's own forward, which makes the weights from coordinates, is the same
on every rank and is not divided. Rank 0 alone writes checkpoints, training states and logs; a stop asked of any
rank (SIGTERM) is agreed by all at the same step. gloo on the CPU, NCCL on CUDA.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from neumeta_core.errors import InputError


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank `rank` of `size`, on `device`."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global batch: the rank-th of `size` equal slices."""
        if self.size == 1:
            return x, y
        n = len(y) // self.size
        part = slice(self.rank * n, (self.rank + 1) * n)
        return x[part], y[part]

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` wrapped in DistributedDataParallel (its state broadcast from rank 0, gradients averaged in
        backward); itself on one process."""
        if self.size == 1:
            return module
        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return DistributedDataParallel(module, device_ids=ids)

    def accumulating(self, module: nn.Module, last: bool) -> contextlib.AbstractContextManager[None]:
        """Around a forward and backward that are not the step's last: gradients add up locally, and the last
        backward averages the sum over the ranks (DDP's no_sync)."""
        if isinstance(module, DistributedDataParallel) and not last:
            return module.no_sync()  # type: ignore[no-any-return]
        return contextlib.nullcontext()

    def mean(self, value: float) -> float:
        """`value` averaged over the ranks (every rank must call it at the same point)."""
        if self.size == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return float(total.item()) / self.size

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (every rank must call it at the same point)."""
        if self.size == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


SINGLE = World()


def launched() -> bool:
    """Whether this process was started by torchrun (it sets WORLD_SIZE, RANK and LOCAL_RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def start(device: str) -> World:
    """This process's World: joins torchrun's process group (gloo on the CPU, NCCL on CUDA, each rank on the GPU
    of its local rank), or the single world when not started by torchrun."""
    if not launched():
        return World(0, 1, device)
    size, rank, local = (int(os.environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    if size == 1:
        return World(0, 1, device)
    if device == "cuda":
        if torch.cuda.device_count() <= local:
            raise InputError(f"rank {rank} wants GPU {local}, but this node has {torch.cuda.device_count()}")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return World(rank, size, device)


@contextlib.contextmanager
def joined(device: str) -> Iterator[World]:
    """start(device) for the block; the process group is left on the way out."""
    world = start(device)
    try:
        yield world
    finally:
        if world.size > 1 and dist.is_initialized():
            dist.destroy_process_group()
