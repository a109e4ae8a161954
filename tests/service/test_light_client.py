"""The edge client needs neither torch nor the training code: `neumeta fetch` runs in a virtual environment
that holds only what the README's edge install puts there (the project without its dependencies, plus
httpx, tqdm and pydantic-settings, each with its own requirements), and downloads a verified model."""

import hashlib
import subprocess
import venv
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from tests.service.conftest import serving

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ("httpx", "tqdm", "pydantic-settings")  # the README's edge install


def closure(names: tuple[str, ...]) -> set[str]:
    """The distributions `names` need, with their own requirements (no extras), as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        dist = metadata.distribution(todo.pop())
        name = dist.metadata["Name"].lower()
        if name in seen:
            continue
        seen.add(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def top_level(dist_name: str) -> set[Path]:
    """The files and folders a distribution put into site-packages (its importable names)."""
    dist = metadata.distribution(dist_name)
    site = Path(str(dist.locate_file("")))
    out = set()
    for f in dist.files or []:
        first = Path(str(f)).parts[0]
        if first.endswith((".dist-info", ".data")) or first == ".." or first == "__pycache__":
            continue
        out.add(site / first)
    return out


def edge_venv(root: Path, client: tuple[str, ...]) -> Path:
    """A fresh venv whose site-packages links only `client`'s distributions and the project's code."""
    venv.create(root / "venv", with_pip=False)
    python = root / "venv" / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    libs = root / "libs"
    libs.mkdir()
    for dist in closure(client):
        for path in top_level(dist):
            if path.exists() and not (libs / path.name).exists():
                (libs / path.name).symlink_to(path)
    code = root / "code"
    code.mkdir()
    for package in ("service", "neumeta_core"):
        (code / package).symlink_to(ROOT / package)
    (site / "edge.pth").write_text(f"{libs}\n{code}\n")
    return python


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> Path:
    return edge_venv(tmp_path_factory.mktemp("edge"), CLIENT)


def test_fitting_on_the_device_needs_only_onnxruntime_more(tmp_path):
    """`neumeta fetch --max-latency-ms` measures with onnxruntime: the client's environment plus onnxruntime
    (and what it requires), still without torch or onnx, picks and downloads a model."""
    python = edge_venv(tmp_path / "edge", (*CLIENT, "onnxruntime"))
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0
    assert subprocess.run([str(python), "-c", "import onnx"], capture_output=True).returncode != 0
    out = tmp_path / "m.onnx"
    argv = ["-m", "service.cli", "fetch", "--max-latency-ms", "100000", "--latency-cache", str(tmp_path / "t.json")]
    with serving() as live:
        done = subprocess.run(
            [str(python), *argv, "--url", live.url, "-o", str(out)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        expected = httpx.get(f"{live.url}/models", params={"width": 32}, timeout=120).content
    assert "picked width 32" in done.stdout and out.read_bytes() == expected


def test_the_edge_venv_has_no_torch(edge):
    done = subprocess.run([str(edge), "-c", "import torch"], capture_output=True, text=True)
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr
    for heavy in ("numpy", "onnx", "fastapi", "sklearn"):
        assert subprocess.run([str(edge), "-c", f"import {heavy}"], capture_output=True).returncode != 0, heavy


def test_fetch_from_the_edge_venv_downloads_a_verified_model(edge, tmp_path):
    out = tmp_path / "m.onnx"
    with serving() as live:
        done = subprocess.run(
            [str(edge), "-m", "service.cli", "fetch", "--url", live.url, "--ratio", "0.5", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        served = hashlib.sha256(
            httpx.post(f"{live.url}/models", params={"ratio": 0.5}, timeout=120).content
        ).hexdigest()
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    assert sha == served and f"sha256 {sha}" in done.stdout
    imported = subprocess.run(
        [
            str(edge),
            "-X",
            "importtime",
            "-m",
            "service.cli",
            "fetch",
            "--url",
            "http://127.0.0.1:9",
            "--ratio",
            "0.5",
            "-o",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 2 and "cannot reach" in imported.stderr
    assert "neumeta_core.train" not in imported.stderr and " torch" not in imported.stderr
