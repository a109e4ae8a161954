"""Resident memory of the service: at idle, and after it has made and cached 100 distinct models.

    .venv/bin/python bench/memory.py [--models 100]

Starts `neumeta serve` (bundled checkpoint, in-process cache, 127.0.0.1), reads VmRSS and VmHWM from
/proc once it is ready, requests --models distinct models (the served widths x onnx/safetensors x
float32/float16: the bundled checkpoint serves 25 widths, 8..32, so 100 distinct models need the four file
variants), and reads them again, with the bytes the cache holds. GPU memory is read from
torch.cuda on a CUDA machine (the service itself does not report it). Writes docs/results/memory.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import urllib.request
from pathlib import Path

from tqdm import tqdm

from neumeta_core import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.service.conftest import serving

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


# glibc gives each thread that allocates its own arena; freed blocks stay with it. The service allocates
# on the event loop, the synthesis worker and onnxruntime's threads, so its RSS grows with fragmentation.
CONFIGS = [{}, {"MALLOC_ARENA_MAX": "2"}]


def measure(env: dict[str, str], variants: list[tuple[int, str, str]]) -> dict[str, object]:
    with serving(None, True, None, **env) as live:  # log, ready, port by position: env is all strings
        pid = live.proc.pid
        idle = status_kib(pid, "VmRSS")
        cached = 0
        label = " ".join(f"{k}={v}" for k, v in env.items()) or "default"
        for width, fmt, dtype in tqdm(variants, desc=f"distinct models ({label})", unit="model"):
            url = f"{live.url}/models?width={width}&format={fmt}&dtype={dtype}"
            with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=120) as r:
                assert r.status == 200
                cached += len(r.read())
        after = status_kib(pid, "VmRSS")
        peak = status_kib(pid, "VmHWM")
    return {
        "config": label,
        "rss_idle_mib": round(idle / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "growth_mib": round((after - idle) / 1024, 1),
        "cached_model_bytes_mib": round(cached / 2**20, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=100)
    p.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    args = p.parse_args()
    target = checkpoint.load().target  # every width the bundle serves
    widths = range(target.min_width, target.max_width + 1)
    variants = list(itertools.product(widths, ("onnx", "safetensors"), ("float32", "float16")))
    if args.models > len(variants):
        sys.exit(f"the bundled checkpoint has {len(variants)} distinct models; ask for at most that many")
    record: dict[str, object] = {
        "command": "python bench/memory.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "models": args.models,
        "runs": [measure(env, variants[: args.models]) for env in CONFIGS],
    }
    print("| glibc malloc | RSS idle (MiB) | after models (MiB) | peak (MiB) | growth (MiB) | cached files (MiB) |")
    print("|---|---|---|---|---|---|")
    for run in record["runs"]:  # type: ignore[attr-defined]
        print(
            f"| {run['config']} | {run['rss_idle_mib']} | {run['rss_after_mib']} | {run['rss_peak_mib']} "
            f"| {run['growth_mib']} | {run['cached_model_bytes_mib']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
