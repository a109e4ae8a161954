"""Training that survives: the whole state of a run, written every N steps and on SIGTERM, resumed with --resume.

A run is three phases: the teacher (`pretrain`), the warm start and the task phase (or its sandwich form). At a
step boundary a phase hands `Resumable.step` its state: the networks, the optimiser and schedule, the EMA, every
random generator it draws from and the data order (the epoch's permutation and the position in it, `Batches`).
The state goes to one file next to the output, written to a temporary file and renamed, so a crash leaves the
previous state whole. `--resume` reads it back: the phases before the saved one are skipped (their results are
in it), the saved phase continues from its step, and on the CPU the run ends bitwise where an uninterrupted one
would. A state written by another recipe, builder or data set is refused, and so is a damaged file.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from neumeta_core.data import Split
from neumeta_core.distributed import SINGLE, World
from neumeta_core.errors import InputError

FORMAT = "neumeta-train-state/1"
PHASES = ("pretrain", "warm", "task")
EVERY = 500  # steps between saves unless --save-every says otherwise


class Batches:
    """Endless shuffled, augmented training batches whose position can be saved and restored: the epoch's
    permutation, the next batch's index in it, and the generator (which the augmentation draws from too). Every
    rank of a data-parallel run draws and augments the same global batch and keeps its shard (`world`), so the
    generator's state is the same on every rank and in a one-process run."""

    def __init__(self, split: Split, batch_size: int, gen: torch.Generator, world: World = SINGLE) -> None:
        self.split, self.gen, self.world = split, gen, world
        self.size = min(batch_size, len(split.y_train))
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.split.y_train)
        if self.perm is None or self.pos + self.size > n:
            self.perm, self.pos = torch.randperm(n, generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.size].to(self.split.y_train.device)
        self.pos += self.size
        return self.world.shard(self.split.augment(self.split.x_train[idx], self.gen), self.split.y_train[idx])

    def state_dict(self) -> dict[str, Any]:
        return {"perm": self.perm, "pos": self.pos, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.perm, self.pos = state["perm"], int(state["pos"])
        self.gen.set_state(state["gen"])


def state_path(out: Path) -> Path:
    """Where a run writing `out` keeps its training state."""
    return out.with_name(out.name + ".train-state")


class Resumable:
    """The training state of one run: saved every `every` steps and when SIGTERM arrives (then the run stops
    with a message saying how to resume); `saved`, the state read back with --resume."""

    def __init__(
        self, path: Path, identity: dict[str, Any], every: int = EVERY, resume: bool = False, world: World = SINGLE
    ) -> None:
        self.path, self.identity, self.every, self.world = path, identity, max(1, every), world
        self.done: dict[str, Any] = {}  # what finished phases leave to the later ones (the teacher)
        self.saved: dict[str, Any] | None = self._read() if resume else None
        if self.saved is not None:
            self.done = dict(self.saved["done"])
        self.stop = False
        self._previous: Any = None

    def _read(self) -> dict[str, Any] | None:
        if not self.path.exists():
            raise InputError(f"--resume: no training state at {self.path} (a run saves one every {self.every} steps)")
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file, whatever torch makes of it
            raise InputError(f"--resume: {self.path} is not a readable training state ({type(exc).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("phase") not in PHASES:
            raise InputError(f"--resume: {self.path} is not a {FORMAT} training state")
        if state.get("identity") != self.identity:
            theirs = state.get("identity") or {}
            differ = sorted(k for k in set(theirs) | set(self.identity) if theirs.get(k) != self.identity.get(k))
            raise InputError(
                f"--resume: {self.path} was written by another run (it differs in {', '.join(differ)}): "
                "give the same model, data and recipe, or start afresh without --resume"
            )
        return state

    def start(self, phase: str) -> tuple[int, dict[str, Any] | None]:
        """Where `phase` starts: (0, None) afresh, (step, its saved state) when resuming inside it, or
        (-1, None) when the saved run had already finished it (skip it)."""
        if self.saved is None:
            return 0, None
        saved = PHASES.index(self.saved["phase"])
        here = PHASES.index(phase)
        if here < saved:
            return -1, None
        if here > saved:
            return 0, None
        return int(self.saved["step"]), self.saved["state"]

    def step(self, phase: str, step: int, total: int, state: Callable[[], dict[str, Any]]) -> None:
        """Called after step `step` (1-based) of `phase`: the state is written every `every` steps and on
        SIGTERM, after which the run stops (exit status 143). The ranks of a data-parallel run agree on the stop:
        a signal that reached any rank stops every rank after the same step, and rank 0 writes the state."""
        stop = self.world.any(self.stop)
        if self.world.main and (stop or (step % self.every == 0 and step < total)):
            self.write(phase, step, state())
        if stop:
            if self.world.main:
                print(
                    f"neumeta train: stopped by SIGTERM at {phase} step {step}/{total}; the state is in {self.path}: "
                    "run the same command with --resume to continue",
                    file=sys.stderr,
                )
            sys.exit(128 + signal.SIGTERM)

    def write(self, phase: str, step: int, state: dict[str, Any]) -> None:
        payload = {
            "format": FORMAT,
            "identity": self.identity,
            "phase": phase,
            "step": step,
            "state": state,
            "done": self.done,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.path)

    def finish(self) -> None:
        """The run is complete: its state is of no further use."""
        if self.world.main:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Resumable:
        def requested(signum: int, frame: FrameType | None) -> None:
            self.stop = True

        self._previous = signal.signal(signal.SIGTERM, requested)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def rng_state(rng: Any) -> list[Any]:
    """A random.Random's state as lists and ints (what torch.load(weights_only=True) reads back)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: Any, state: list[Any]) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))
