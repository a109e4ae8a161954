"""A guard against a race in torch's CPU math kernels (seen with torch 2.13.0+cpu on this project's 2-core
AVX-512 machines): in about one process in five, the *first* call of a vectorised exp, sin, cos or tanh on a tensor
large enough to be split over two threads computes one thread's half with an error of up to 2e-4 (against 4e-8
for every later call). The coordinates' Fourier features and the synthesis plan's ELU are such calls: a served
file's bytes then differed between two fresh processes (tests/core/test_files.py caught it). One call of each on a
small tensor, in one thread, before anything else makes every later call exact; `warm` does that once per process.
"""

from __future__ import annotations

import threading

import torch

_done = False
_lock = threading.Lock()


def warm() -> None:
    """Call each vectorised math kernel this package uses once, single-threaded (64 values)."""
    global _done
    if _done:
        return
    with _lock:
        if not _done:
            x = torch.linspace(-1.0, 1.0, 64)
            for op in (torch.exp, torch.expm1, torch.sin, torch.cos, torch.tanh, torch.sigmoid, torch.log1p):
                op(x)
            _done = True
