"""Real processes for tests: a redis-server of our own on a free loopback port, the `neumeta` command, and
Debian's nginx with the shipped proxy config."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

BIN = Path(sys.executable).parent / "neumeta"


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (torchrun's workers run in sessions of their own, so a process group
    does not hold them)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    return [pid, *(p for child in children for p in descendants(child))]


def kill_tree(pid: int) -> None:
    """SIGKILL to `pid` and all below it at once: what losing the node does to a run."""
    for p in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, 9)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """redis-server on a free loopback port, in a temp dir, with the documented eviction policy."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is missing: .ci/run installs it (apt-get install redis-server)"
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]
        self.proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


NGINX_TEMPLATE = Path(__file__).resolve().parent.parent / "docker/nginx/neumeta.conf.template"


def render(template: str, env: dict[str, str]) -> str:
    """envsubst as the nginx image runs it: only ${NAME} of the given variables is replaced."""
    for name, value in env.items():
        template = template.replace("${" + name + "}", value)
    return template


class Nginx:
    """Debian's nginx with the shipped proxy config (docker/nginx/neumeta.conf.template), in front of a
    service at `upstream`, everything in `workdir`. The main config stands in for the nginx image's own."""

    def __init__(self, workdir: Path, upstream: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        env = {
            "NEUMETA_UPSTREAM": upstream,
            "NGINX_PORT": f"127.0.0.1:{self.port}",
            "NGINX_CACHE_DIR": str(workdir / "cache"),
            "NGINX_CACHE_MAX_SIZE": "256m",
        }
        (workdir / "neumeta.conf").write_text(render(NGINX_TEMPLATE.read_text(), env))
        lines = [
            "user root;" if os.geteuid() == 0 else "",  # the workers must reach this test's directories
            "daemon off;",
            "worker_processes 1;",
            f"pid {workdir / 'nginx.pid'};",
            f"error_log {workdir / 'error.log'} warn;",
            "events { worker_connections 1024; }",
            "http {",
            "  access_log off;",
            "  sendfile on;",
            *(f"  {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
            f"  include {workdir / 'neumeta.conf'};",
            "}",
        ]
        (workdir / "nginx.conf").write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        assert Path(exe).exists(), "nginx is missing: .ci/run installs it (apt-get install nginx-light)"
        conf = str(self.workdir / "nginx.conf")
        check = subprocess.run(
            [exe, "-t", "-q", "-c", conf, "-e", str(self.workdir / "error.log")], capture_output=True
        )
        assert check.returncode == 0, check.stderr.decode()
        self.proc = subprocess.Popen(
            [exe, "-c", conf, "-e", str(self.workdir / "error.log")], stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert time.monotonic() < deadline and self.proc.poll() is None, (  # timing-ok: against a hang
                    self.workdir / "error.log"
                ).read_text()
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None
