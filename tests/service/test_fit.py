"""`neumeta fetch --max-latency-ms` against a real server: the largest model that meets the budgets measured on
this machine, only the winner written, measurements kept for a rerun (service/fit.py)."""

import hashlib
import json
import subprocess

import httpx
import pytest

from service import fit
from tests.service.conftest import BIN, serving

KEY = "fit-test-key"


@pytest.fixture(scope="module")
def server():
    with serving(NEUMETA_API_KEYS=KEY) as live:
        yield live


def served(server, width: int) -> bytes:
    r = httpx.get(f"{server.url}/models", params={"width": width}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return r.content


def by_length(body: bytes, shape: list[int], threads: int) -> float:
    """A stand-in for the clock in the search's own test: grows with the file, as time does, and never varies,
    so the test can place a budget exactly between two widths."""
    return len(body) / 1000.0


def test_the_search_keeps_the_larger_of_two_neighbours_that_fits_and_a_rerun_measures_nothing(server, tmp_path):
    cache = fit.Measurements(tmp_path / "latency.json", "this-machine")
    t20, t21 = (by_length(served(server, w), [], 1) for w in (20, 21))
    budget = (t20 + t21) / 2  # between the times of widths 20 and 21
    search = fit.Search(server.url, {}, KEY, 1, cache, measure=by_length)
    best = search.largest(budget, None)
    assert best.width == 20 and best.ms == t20
    assert search.seen[21].ms == t21 and search.measured == len(search.seen) <= 7  # bisection: a few of 25
    assert best.sha256 == hashlib.sha256(served(server, 20)).hexdigest()
    again = fit.Search(server.url, {}, KEY, 1, fit.Measurements(cache.path, "this-machine"), measure=by_length)
    assert again.largest(budget, None).width == 20 and again.measured == 0
    other = fit.Search(server.url, {}, KEY, 1, fit.Measurements(cache.path, "another-machine"), measure=by_length)
    assert other.largest(budget, None).width == 20 and other.measured == search.measured  # keyed by the machine
    assert set(json.loads(cache.path.read_text())) == {"this-machine", "another-machine"}


def test_fetch_measures_here_downloads_only_the_winner_and_reuses_its_measurements(server, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    base = [str(BIN), "fetch", "--url", server.url, "--api-key-file", str(key_file)]
    base += ["--latency-cache", str(tmp_path / "latency.json")]
    out = out_dir / "m.onnx"
    first = subprocess.run([*base, "--max-latency-ms", "100000", "-o", str(out)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "picked width 32" in first.stdout and "2 measured, 0 from the cache" in first.stdout  # 8 and 32
    assert out.read_bytes() == served(server, 32) and list(out_dir.iterdir()) == [out]  # only the winner written
    again = subprocess.run([*base, "--max-latency-ms", "100000", "-o", str(out)], capture_output=True, text=True)
    assert again.returncode == 0 and "0 measured, 2 from the cache" in again.stdout
    assert "up-to-date" in again.stdout

    twelve = served(server, 12)  # a byte budget of a served file's size picks that file
    sized = out_dir / "sized.onnx"
    argv = [*base, "--max-latency-ms", "100000", "--max-bytes", str(len(twelve)), "-o", str(sized)]
    by_bytes = subprocess.run(argv, capture_output=True, text=True)
    assert by_bytes.returncode == 0, by_bytes.stderr
    assert "picked width 12" in by_bytes.stdout and sized.read_bytes() == twelve

    none = subprocess.run([*base, "--max-latency-ms", "0.000001", "-o", str(out_dir / "x.onnx")], capture_output=True)
    stderr = none.stderr.decode()
    assert none.returncode == 2 and len(stderr.splitlines()) == 1
    said = "no model meets --max-latency-ms 1e-06 on this machine: the smallest (width 8"
    assert said in stderr
    assert not (out_dir / "x.onnx").exists()


@pytest.mark.parametrize(
    "flags,says",
    [
        (["--max-latency-ms", "-1"], "'-1' is not a number > 0"),
        (["--max-latency-ms", "0"], "'0' is not a number > 0"),
        (["--max-latency-ms", "fast"], "'fast' is not a number > 0"),
        (["--max-latency-ms", "inf"], "'inf' is not a number > 0"),
        (["--max-bytes", "0"], "'0' is not a positive integer"),
        (["--max-latency-ms", "5", "--ratio", "0.5"], "give one size (--ratio, --width or --max-params) or budgets"),
        ([], "give one size (--ratio, --width or --max-params) or budgets"),
    ],
)
def test_bad_budgets_are_one_line_and_status_2(server, tmp_path, flags, says):
    r = subprocess.run(
        [str(BIN), "fetch", "--url", server.url, *flags, "-o", str(tmp_path / "m.onnx")], capture_output=True, text=True
    )
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_a_wrong_api_key_from_a_file_is_the_servers_401_in_one_line(server, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("wrong-key\n")
    r = subprocess.run(
        [
            str(BIN),
            "fetch",
            "--url",
            server.url,
            "--api-key-file",
            str(key_file),
            "--width",
            "8",
            "-o",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "401" in r.stderr and len(r.stderr.splitlines()) == 1
