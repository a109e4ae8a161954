"""`neumeta fetch` against a real server process: verified, atomic, resumable, skipped when current."""

import hashlib
import json
import signal
import socket
import subprocess
import threading
import time

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


def test_fetch_with_a_byte_budget_of_a_served_files_size_gets_that_file(server, tmp_path):
    twelve = httpx.get(f"{server.url}/models", params={"width": 12, "dtype": "float16"}, timeout=120)
    out = tmp_path / "m.onnx"
    argv = [str(BIN), "fetch", "--url", server.url, "--max-bytes", str(len(twelve.content)), "--dtype", "float16"]
    done = subprocess.run([*argv, "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == twelve.content
    small = subprocess.run([*argv[:-3], "10", "-o", str(tmp_path / "none.onnx")], capture_output=True, text=True)
    assert small.returncode == 2 and "max_bytes=10 fits no file" in small.stderr and len(small.stderr.splitlines()) == 1
    assert not (tmp_path / "none.onnx").exists()


def test_fetch_reports_a_bad_request_and_writes_nothing(server, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(FetchError, match=r"422.*ratio must be a number"):
        fetch(server.url, {"ratio": "3"}, out, progress=False)
    assert not out.exists()


def test_a_damaged_state_file_is_discarded_with_a_message(server, tmp_path):
    out = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.part").write_bytes(b"\x00" * 100)
    (tmp_path / "m.onnx.part.json").write_text('{"sha256": "abc", "loc')  # cut short
    said: list[str] = []
    got = fetch(server.url, {"width": "11"}, out, progress=False, say=said.append)
    assert got.status == "downloaded" and hashlib.sha256(out.read_bytes()).hexdigest() == got.sha256
    assert said == [
        f"discarding the partial download: its state file {tmp_path / 'm.onnx.part.json'} is damaged; starting over"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


class Stalling:
    """A server that answers a size request with the real file's headers and its first `send` bytes, then
    stalls: a download caught in the middle."""

    def __init__(self, body: bytes, headers: httpx.Headers, send: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.sent = threading.Event()
        self.release = threading.Event()
        head = (
            "HTTP/1.1 200 OK\r\n"
            + "".join(f"{k}: {headers[k]}\r\n" for k in ("etag", "location", "x-neumeta-width"))
            + f"content-length: {len(body)}\r\n\r\n"
        )
        self.reply = head.encode() + body[:send]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(self.reply)
            self.sent.set()
            self.release.wait(120)

    def close(self) -> None:
        self.release.set()
        self.sock.close()


def test_ctrl_c_keeps_the_partial_file_and_says_how_to_resume(server, tmp_path):
    made = httpx.get(f"{server.url}/models", params={"width": "18"})
    stall = Stalling(made.content, made.headers, 5000)
    out = tmp_path / "m.onnx"
    cmd = [str(BIN), "fetch", "--url", stall.url, "--width", "18", "-o", str(out)]
    try:
        # SIGINT as a terminal's Ctrl-C sends it; its default disposition restored, since a shell that starts
        # the tests in the background (without job control) makes its children ignore SIGINT
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert stall.sent.wait(120)
        part = tmp_path / "m.onnx.part"
        for _ in range(1200):  # until the client has written what it received (a bound against a hang)
            if part.exists() and part.stat().st_size == 5000:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        stall.close()
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"neumeta fetch: interrupted; 5,000 bytes are kept in {part}: run the same command again to resume"
    )
    again = subprocess.run([*cmd[:3], server.url, *cmd[4:]], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"resumed: {out}") and out.read_bytes() == made.content
