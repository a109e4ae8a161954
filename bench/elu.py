"""The hypernetwork's ELU three ways, on the activations a small synthesis holds (a probe for issue 14).

    .venv/bin/python bench/elu.py [--rows 3784] [--threads 1 2] [--repeats 300]

The MLPs of a synthesis apply ELU to every hidden activation, four passes per row at 128 hidden units. At the
small widths that is a large share of a cold synthesis (3,784 rows per pass for the Fashion bundle at h = 8, K = 4).
Three ways to compute it in place on the same values, the fastest of --repeats each, alternated:

- torch's `elu_` (through expm1);
- max(x, exp(min(x, 0)) - 1), how neumeta_core/plan.py computed it before (the same function, since e^x - 1 >= x);
- max(x, 2^(min(x, 0) log2 e) - 1), `plan._elu` now, with exp2 in place of exp;

and exp and exp2 alone on the same number of values. The largest difference from torch's ELU is printed too.

Writes docs/results/elu.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from neumeta_core.plan import _elu
from neumeta_core.report import cpu_name

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def through_exp(x: torch.Tensor, scratch: torch.Tensor) -> None:
    torch.clamp_max(x, 0, out=scratch)
    scratch.exp_().sub_(1)
    torch.maximum(x, scratch, out=x)


def measure(rows: int, threads: int, repeats: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    source = torch.randn(rows, 128)
    x, scratch = torch.empty_like(source), torch.empty_like(source)
    negative = source.clamp_max(0)
    ways: dict[str, Callable[[], object]] = {
        "copy": lambda: x.copy_(source),
        "torch_elu": lambda: torch.nn.functional.elu_(x.copy_(source)),
        "max_exp": lambda: through_exp(x.copy_(source), scratch),
        "max_exp2": lambda: _elu(x.copy_(source), scratch),
        "exp": lambda: x.copy_(negative).exp_(),
        "exp2": lambda: x.copy_(negative).exp2_(),
    }
    best = dict.fromkeys(ways, math.inf)
    for _ in range(repeats):
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            best[name] = min(best[name], time.perf_counter() - started)
    copy = best.pop("copy")  # every way starts by copying the values in: not counted
    return {name: round((seconds - copy) * 1e3, 4) for name, seconds in best.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=3784)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--out", type=Path, default=RESULTS / "elu.json")
    args = p.parse_args()
    x = torch.linspace(-30, 30, 100001)
    got = x.clone()
    _elu(got, torch.empty_like(got))
    error = float((got - torch.nn.functional.elu(x)).abs().max())
    by_threads = {t: measure(args.rows, t, args.repeats) for t in args.threads}
    print(f"{args.rows} x 128 values, ms (fastest of {args.repeats}); plan._elu against torch's ELU: {error:.1e}")
    print("| threads | torch elu_ | max(x, exp - 1) | max(x, exp2 - 1) (plan) | exp alone | exp2 alone |")
    print("|---|---|---|---|---|---|")
    for t, r in by_threads.items():
        print(f"| {t} | {r['torch_elu']} | {r['max_exp']} | {r['max_exp2']} | {r['exp']} | {r['exp2']} |")
    record = {
        "command": "python bench/elu.py " + " ".join(sys.argv[1:]),
        "machine": cpu_name(),
        "torch": torch.__version__,
        "rows": args.rows,
        "max_abs_difference_from_torch_elu": error,
        "ms_by_threads": by_threads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
