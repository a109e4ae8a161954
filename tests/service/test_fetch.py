"""`neumeta fetch` against a real server process: verified, atomic, resumable, skipped when current."""

import hashlib
import json
import subprocess

import httpx
import pytest

from service.client import FetchError, fetch
from tests.service.conftest import BIN, serving


@pytest.fixture(scope="module")
def server():
    with serving() as live:
        yield live


def test_fetch_downloads_verifies_and_skips_when_current(server, tmp_path):
    out = tmp_path / "m.onnx"
    done = subprocess.run(
        [str(BIN), "fetch", "--url", server.url, "--ratio", "0.25", "-o", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"downloaded: {out} sha256 {sha}" in done.stdout
    assert list(tmp_path.iterdir()) == [out]  # no .part left behind
    again = fetch(server.url, {"ratio": "0.25"}, out, progress=False)
    assert again.status == "up-to-date" and again.sha256 == sha


def test_fetch_resumes_a_broken_download(server, tmp_path):
    full = httpx.post(f"{server.url}/models", params={"width": 10}).content
    sha = hashlib.sha256(full).hexdigest()
    out = tmp_path / "w10.onnx"
    (tmp_path / "w10.onnx.part").write_bytes(full[:5000])
    meta = {"sha256": sha, "location": f"/models/{sha}", "params": {"width": "10"}}
    (tmp_path / "w10.onnx.part.json").write_text(json.dumps(meta))
    got = fetch(server.url, {"width": "10"}, out, progress=False)
    assert got.status == "resumed" and out.read_bytes() == full
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w10.onnx"]


def test_fetch_recovers_from_a_damaged_partial_file(server, tmp_path):
    full = httpx.post(f"{server.url}/models", params={"width": 10}).content
    sha = hashlib.sha256(full).hexdigest()
    out = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.part").write_bytes(b"\x00" * 5000)
    (tmp_path / "m.onnx.part.json").write_text(
        json.dumps({"sha256": sha, "location": f"/models/{sha}", "params": {"width": "10"}})
    )
    got = fetch(server.url, {"width": "10"}, out, progress=False)
    assert got.status == "downloaded" and out.read_bytes() == full


def test_fetch_reports_a_bad_request_and_writes_nothing(server, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(FetchError, match=r"422.*ratio must be a number"):
        fetch(server.url, {"ratio": "3"}, out, progress=False)
    assert not out.exists()
