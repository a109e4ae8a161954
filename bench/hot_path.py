"""A cached model, four ways, side by side: nginx serving the file, nginx's cache in front of the service (the
shipped proxy config), the service alone, and the service without its hot path; at the smallest and the
largest served model.

    .venv/bin/python bench/hot_path.py [--seconds 5] [--rounds 3] [--connections 1 64] [--widths 8 32]

Needs `wrk` and `nginx` (Debian: apt-get install wrk nginx-light; `make bench` installs them).
Everything listens on 127.0.0.1. For each model size and connection count, each round runs wrk (one
thread) against:
  nginx file      a static file with the model's bytes (1 worker, sendfile, no access log)
  nginx cache     docker/nginx/neumeta.conf.template in front of the service, GET /models?width=W: every
                  request after the first is a cache HIT that never reaches Python
  service         the service alone, GET /models?width=W, a hit of service/hotpath.py
  service, FastAPI  the same hit with an If-Match that holds, which the hot path leaves to FastAPI: what a
                  hit costs without service/hotpath.py
alternating the targets within the round, so drift on the shared machine hits all of them alike.
Reports the median over rounds of requests/s, p50 and p99, and each row's ratio to nginx serving the file.
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
from tests.processes import Nginx, free_port
from tests.service.conftest import serving

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
TARGETS = ("nginx file", "nginx cache", "service", "service, FastAPI")
NGINX_CONF = """
{user}
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
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, user="user root;" if os.geteuid() == 0 else ""))
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


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[bytes, Message]:
    """The body and the headers (looked up case-insensitively)."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read(), r.headers


def plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({int(r["bytes"]) for r in rows})  # type: ignore[call-overload]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for target in TARGETS:
            sel = sorted(
                (r for r in rows if r["target"] == target and r["bytes"] == size),
                key=lambda r: int(r["connections"]),  # type: ignore[call-overload]
            )
            ax.plot([r["connections"] for r in sel], [r["rps"] for r in sel], marker="o", label=target)
        width = next(r["width"] for r in rows if r["bytes"] == size)
        ax.set_title(f"width {width}: a {size / 1000:.0f} kB file")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("requests/s")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("A cached model: nginx, nginx's cache in front of the service, the service alone")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=5, help="per wrk run (whole seconds)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, nargs="+", default=[1, 64])
    p.add_argument("--widths", type=int, nargs="+", default=[8, 32], help="default: the smallest and largest served")
    p.add_argument("--out", type=Path, default=RESULTS / "hot_path.json")
    args = p.parse_args()
    require("wrk")
    require("nginx")

    port = free_port()
    with serving(port=port) as live, tempfile.TemporaryDirectory() as tmp:
        proxy = Nginx(Path(tmp) / "proxy", f"127.0.0.1:{port}")
        proxy.start()
        files: dict[int, tuple[bytes, dict[str, tuple[str, Path | None]]]] = {}
        statics = []
        try:
            for width in args.widths:
                body, headers = fetch(f"{live.url}/models?width={width}")  # the miss that fills the cache
                hit, hit_headers = fetch(f"{live.url}/models?width={width}")
                assert hit == body and hit_headers["X-NeuMeta-Cache"] == "hit"
                cached, _ = fetch(f"{proxy.url}/models?width={width}")  # nginx's cache filled
                again, again_headers = fetch(f"{proxy.url}/models?width={width}")
                assert cached == again == body and again_headers["X-Cache-Status"] == "HIT"
                nginx, nginx_url = start_nginx(Path(tmp) / f"static-{width}", body)
                statics.append(nginx)
                script = Path(tmp) / f"if-match-{width}.lua"
                script.write_text(f"wrk.headers[\"If-Match\"] = '{headers['ETag']}'\n")
                files[width] = (
                    body,
                    {
                        "nginx file": (nginx_url, None),
                        "nginx cache": (f"{proxy.url}/models?width={width}", None),
                        "service": (f"{live.url}/models?width={width}", None),
                        "service, FastAPI": (f"{live.url}/models?width={width}", script),
                    },
                )
            runs: dict[tuple[int, str, int], list[dict[str, float]]] = {}
            plan = [
                (w, c, r, t) for w in args.widths for c in args.connections for r in range(args.rounds) for t in TARGETS
            ]
            for width, connections, _, target in tqdm(plan, desc="wrk runs", unit="run"):
                url, lua = files[width][1][target]
                runs.setdefault((width, target, connections), []).append(wrk(url, connections, args.seconds, lua))
        finally:
            proxy.stop()
            for nginx in statics:
                nginx.terminate()
                nginx.wait(timeout=10)

    rows: list[dict[str, object]] = []
    for (width, target, connections), results in runs.items():
        rows.append(
            {
                "width": width,
                "bytes": len(files[width][0]),
                "target": target,
                "connections": connections,
                "rps": round(statistics.median(r["rps"] for r in results), 1),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in results), 3),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in results), 3),
                "errors": sum(int(r["errors"]) for r in results),
                "rounds": [r["rps"] for r in results],
            }
        )
    base = {(r["width"], r["connections"]): r["rps"] for r in rows if r["target"] == "nginx file"}
    for r in rows:
        r["ratio_to_nginx"] = round(float(r["rps"]) / float(base[(r["width"], r["connections"])]), 3)  # type: ignore[arg-type]

    print(f"\nwrk -t1, {args.seconds:g} s x {args.rounds} rounds, medians; ratio: to nginx serving the file\n")
    print(
        "| width | file (bytes) | connections | target | requests/s | p50 (ms) | p99 (ms) | ratio to nginx | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    order = {t: i for i, t in enumerate(TARGETS)}
    for r in sorted(rows, key=lambda r: (r["width"], r["connections"], order[str(r["target"])])):  # type: ignore[arg-type]
        print(
            f"| {r['width']} | {r['bytes']:,} | {r['connections']} | {r['target']} | {r['rps']:,.0f} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['ratio_to_nginx']:.2f} | {r['errors']} |"
        )
    record = {
        "command": "python bench/hot_path.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "seconds": args.seconds,
        "rounds": args.rounds,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
