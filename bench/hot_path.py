"""The hot path: a cached model, from the service and from nginx serving the same bytes, side by side.

    .venv/bin/python bench/hot_path.py [--seconds 5] [--rounds 3] [--connections 1 16 64]

Needs `wrk` and `nginx` (Debian: apt-get install wrk nginx-light; `make bench` installs them).
Everything listens on 127.0.0.1. For each connection count, each round runs wrk (one thread) against:
  nginx     a static file with the model's bytes (1 worker, sendfile, no access log, tcp_nopush off as by
            default: on, it stalls a keep-alive connection ~40 ms at the 99th percentile)
  GET sha   the service, GET /models/{sha256} (the content address)
  POST      the service, POST /models?ratio=0.25 (the size request), a cache hit
  POST via FastAPI  the same hit with an If-None-Match that matches nothing, which the hot path leaves
            to FastAPI: what a hit costs without service/hotpath.py and service/protocol.py
alternating the targets within the round, so drift on the shared machine hits all of them alike.
Reports the median over rounds of requests/s, p50 and p99, and each service row's ratio to nginx.
Writes docs/results/hot_path.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from email.message import Message
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.processes import free_port
from tests.service.conftest import serving

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
RATIO = 0.25
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
    }}
}}
"""


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        sys.exit(f"bench/hot_path.py needs {tool}: apt-get install -y wrk nginx-light (make bench does)")
    return path


def start_nginx(tmp: Path, body: bytes) -> tuple[subprocess.Popen[bytes], str]:
    (tmp / "www").mkdir(parents=True)
    (tmp / "www" / "model.onnx").write_bytes(body)
    for p in (tmp, tmp / "www", tmp / "www" / "model.onnx"):
        p.chmod(0o755)  # nginx's worker may run as nobody
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
    proc = subprocess.Popen([require("nginx"), "-p", str(tmp), "-c", str(conf)], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/model.onnx"
    for _ in range(100):
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                assert r.read() == body
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode() if proc.stderr else ''}")


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, connections: int, seconds: int, script: Path | None = None) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 in ms, and every error it counted."""
    args = [require("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if script is not None:
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout

    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * UNITS[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {"rps": float(rps.group(1)), "p50_ms": latency("50"), "p99_ms": latency("99"), "errors": errors}


def fetch(url: str, method: str = "GET") -> tuple[bytes, Message]:
    """The body and the headers (looked up case-insensitively)."""
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read(), r.headers


def plot(rows: list[dict[str, object]], connections: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for target in ("nginx", "GET sha", "POST", "POST via FastAPI"):
        sel = sorted((r for r in rows if r["target"] == target), key=lambda r: int(r["connections"]))  # type: ignore[call-overload]
        xs = [r["connections"] for r in sel]
        ax1.plot(xs, [r["rps"] for r in sel], marker="o", label=target)
        ax2.plot(xs, [r["p99_ms"] for r in sel], marker="o", label=target)
    for ax, label in ((ax1, "requests/s"), (ax2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(connections, [str(c) for c in connections])
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_title("Cached model: throughput")
    ax2.set_title("Cached model: tail latency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=5, help="per wrk run (whole seconds)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--out", type=Path, default=RESULTS / "hot_path.json")
    args = p.parse_args()
    require("wrk")
    require("nginx")

    with serving() as live, tempfile.TemporaryDirectory() as tmp:
        body, headers = fetch(f"{live.url}/models?ratio={RATIO}", "POST")  # the miss that fills the cache
        sha = headers["ETag"].strip('"')
        hit, hit_headers = fetch(f"{live.url}/models?ratio={RATIO}", "POST")
        assert hit == body and hit_headers["X-NeuMeta-Cache"] == "hit"
        nginx, nginx_url = start_nginx(Path(tmp), body)
        script = Path(tmp) / "post.lua"
        script.write_text('wrk.method = "POST"\n')
        slow = Path(tmp) / "post-fastapi.lua"  # an If-None-Match that matches nothing: FastAPI answers the hit
        slow.write_text('wrk.method = "POST"\nwrk.headers["If-None-Match"] = \'"none"\'\n')
        targets = {
            "nginx": (nginx_url, None),
            "GET sha": (f"{live.url}/models/{sha}", None),
            "POST": (f"{live.url}/models?ratio={RATIO}", script),
            "POST via FastAPI": (f"{live.url}/models?ratio={RATIO}", slow),
        }
        try:
            runs: dict[tuple[str, int], list[dict[str, float]]] = {}
            plan = [(c, r, t) for c in args.connections for r in range(args.rounds) for t in targets]
            for connections, _, target in tqdm(plan, desc="wrk runs", unit="run"):
                url, lua = targets[target]
                runs.setdefault((target, connections), []).append(wrk(url, connections, args.seconds, lua))
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)

    rows: list[dict[str, object]] = []
    for (target, connections), results in runs.items():
        rows.append(
            {
                "target": target,
                "connections": connections,
                "rps": round(statistics.median(r["rps"] for r in results), 1),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in results), 3),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in results), 3),
                "errors": sum(int(r["errors"]) for r in results),
                "rounds": [r["rps"] for r in results],
            }
        )
    nginx_rps = {r["connections"]: r["rps"] for r in rows if r["target"] == "nginx"}
    for r in rows:
        r["ratio_to_nginx"] = round(float(r["rps"]) / float(nginx_rps[r["connections"]]), 3)  # type: ignore[arg-type]

    print(f"\n{len(body):,}-byte model (ratio {RATIO}), wrk -t1, {args.seconds:g} s x {args.rounds} rounds, medians\n")
    print("| connections | target | requests/s | p50 (ms) | p99 (ms) | ratio to nginx | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["connections"], list(targets).index(str(r["target"])))):  # type: ignore[arg-type]
        print(
            f"| {r['connections']} | {r['target']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['ratio_to_nginx']:.2f} | {r['errors']} |"
        )
    record = {
        "command": "python bench/hot_path.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "body_bytes": len(body),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    plot(rows, args.connections, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
