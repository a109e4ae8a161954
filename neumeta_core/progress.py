"""What a training run shows and records: one progress bar per phase (loss, accuracy at a probe width, steps/s,
ETA) and, with a log file, the same as one JSON object per line, so that a long run can be watched and plotted
(bench/training_log.py). Only the main process of a data-parallel run reports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from tqdm import tqdm

from neumeta_core.distributed import SINGLE, World

EVERY = 50  # steps between reports: the bar's figures, a log line and (where given) the probe's accuracy


class Progress:
    """Where a run reports. `show`: the bars (stderr); `log`: a JSON-lines file, appended to when `append` (a
    resumed run continues its log), else written afresh."""

    def __init__(self, show: bool = True, log: Path | None = None, every: int = EVERY, append: bool = False) -> None:
        self.show, self.every = show, max(1, every)
        self._file: IO[str] | None = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            self._file = log.open("a" if append else "w", encoding="utf-8")

    @property
    def reporting(self) -> bool:
        return self.show or self._file is not None

    @classmethod
    def quiet(cls) -> Progress:
        return cls(show=False)

    def phase(self, name: str, start: int, total: int, world: World = SINGLE, probe_width: int | None = None) -> Phase:
        return Phase(self, name, start, total, world, probe_width)

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def shown(progress: Progress | bool) -> Progress:
    """A Progress from the older `progress: bool` of the baseline helpers."""
    return progress if isinstance(progress, Progress) else Progress(show=progress)


class Phase:
    """One phase's bar and log lines: `step` after each step, with its loss (averaged over the ranks of `world`:
    the loss of the global batch), the width it ran at and a probe of the accuracy (called every `every` steps and
    at the last, never more often)."""

    def __init__(
        self, progress: Progress, name: str, start: int, total: int, world: World, probe_width: int | None
    ) -> None:
        self.progress, self.name, self.start, self.total, self.world = progress, name, start, total, world
        self.probe_width = probe_width  # where the probe's accuracy is measured
        self.started = time.perf_counter()
        self.bar = tqdm(
            total=total, initial=start, desc=name, unit="step", disable=not progress.show, mininterval=1.0, leave=True
        )
        self.accuracy: float | None = None

    def step(
        self,
        step: int,
        loss: torch.Tensor | float,
        width: int | None = None,
        probe: Callable[[], float] | None = None,
        **extra: float,
    ) -> None:
        """After step `step` (1-based) of the phase."""
        self.bar.update(1)
        if step % self.progress.every and step != self.total:
            return
        value = self.world.mean(float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss))
        if not self.progress.reporting:
            return
        if probe is not None:
            self.accuracy = probe()
        done = step - self.start
        seconds = time.perf_counter() - self.started
        rate = done / seconds if seconds > 0 and done > 0 else None
        figures = {"loss": f"{value:.4f}"}
        if self.accuracy is not None:
            figures[f"acc@h{self.probe_width}" if self.probe_width else "acc"] = f"{self.accuracy:.2f}%"
        if width is not None:
            figures["h"] = str(width)
        self.bar.set_postfix(figures, refresh=False)
        self.progress.write(
            {
                "phase": self.name,
                "step": step,
                "steps": self.total,
                "loss": value,
                "accuracy": self.accuracy,
                "probe_width": self.probe_width,
                "width": width,
                "seconds": round(seconds, 3),
                "steps_per_second": None if rate is None else round(rate, 4),
                "eta_seconds": None if rate is None else round((self.total - step) / rate, 1),
                **extra,
            }
        )

    def close(self) -> None:
        self.bar.close()
