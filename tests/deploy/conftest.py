"""What the deployment files are checked against: the app's own routes and settings, read from the code.

Nothing here names a probe path, a port or a NEUMETA_* variable: a rename in the app, or a typo in a
manifest, makes the deployment tests fail instead of the first `kubectl apply`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from starlette.routing import Match

from service.config import Settings
from service.main import create_app

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("cpu", "gpu")
DOCKERFILES = ("docker/Dockerfile", "docker/Dockerfile.cuda")


class Routes:
    """The app's own routing: does a GET to this path reach an endpoint? (Creating the app loads nothing.)"""

    def __init__(self) -> None:
        self.app = create_app(Settings())

    def __contains__(self, path: object) -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
        return any(route.matches(scope)[0] is Match.FULL for route in self.app.router.routes)

    def __repr__(self) -> str:
        return f"<GET routes of the app, documented: {sorted(self.app.openapi()['paths'])} and /metrics>"


def setting_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the service would read them from exactly this environment (values validated)."""
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def url_path(url: str) -> str:
    return urlsplit(url).path


def local(command: list[str], port: int, bindir: Path = Path(sys.executable).parent) -> list[str]:
    """A container's command or healthcheck, pointed at this host's loopback and the test's port, its
    `python` and `neumeta` taken from `bindir` (a venv's bin; default: the one running the tests)."""
    out = [a.replace("0.0.0.0", "127.0.0.1") for a in command]
    if "--port" in out:
        out[out.index("--port") + 1] = str(port)
    if "http" in " ".join(out):
        written = urlsplit(find_url(" ".join(out))).port
        out = [a.replace(f":{written}/", f":{port}/") for a in out]
    return [str(bindir / a) if a in ("python", "neumeta") else a for a in out]


def find_url(text: str) -> str:
    """The one http URL in a healthcheck command."""
    (url,) = re.findall(r"https?://[^'\"\s)]+", text)
    return url


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[dict[str, Any]]

    def all(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == instruction]


@dataclass
class Dockerfile:
    path: str
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def command(self) -> list[str]:
        (cmd,) = self.final.all("CMD")
        return list(json.loads(cmd))

    @property
    def healthcheck(self) -> list[str]:
        (health,) = self.final.all("HEALTHCHECK")
        return list(json.loads(health.split(" CMD ", 1)[1]))

    def expand(self, text: str) -> str:
        for key, value in self.args.items():
            text = text.replace("${" + key + "}", value)
        return text


def parse_dockerfile(path: str) -> Dockerfile:
    with (ROOT / path).open("rb") as f:
        structure = DockerfileParser(fileobj=f).structure
    args: dict[str, str] = {}  # ARG defaults, global or per stage (the names do not repeat here)
    stages: list[Stage] = []
    for item in structure:
        if item["instruction"] == "ARG" and "=" in item["value"]:
            key, _, value = item["value"].partition("=")
            args.setdefault(key.strip(), value.strip())
        if item["instruction"] == "FROM":
            base, _, name = item["value"].partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None, []))
        elif stages:
            stages[-1].instructions.append(item)
    return Dockerfile(path, args, stages)


def makefile_torch() -> str:
    """The torch version the Makefile installs (TORCH := torch==X)."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("TORCH :="):
            return line.split("==", 1)[1].strip()
    raise AssertionError("Makefile has no TORCH := torch==X line")


@pytest.fixture(scope="session")
def routes() -> Routes:
    return Routes()


@pytest.fixture(scope="session")
def settings_env() -> set[str]:
    return setting_names()


@pytest.fixture(scope="session")
def dockerfiles() -> dict[str, Dockerfile]:
    return {path: parse_dockerfile(path) for path in DOCKERFILES}


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def compose_gpu() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker/compose.gpu.yml").read_text())


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: install kubectl (it carries kustomize) to render k8s/overlays")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "k8s/overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay} failed:\n{out.stderr}"
    return [obj for obj in yaml.safe_load_all(out.stdout) if obj]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}
