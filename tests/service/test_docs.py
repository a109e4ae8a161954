"""/docs in a real browser (Debian's headless Chromium), on a machine with no route to any CDN: the page
renders every operation and the "Authorize" button of the bearer scheme from the service's own assets."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.service.conftest import serving

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is missing: `make test` installs it (apt-get install chromium)"
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium")
    with serving() as live:
        done = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", f"{live.url}/docs"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_docs_page_renders_offline_with_an_authorize_button(rendered):
    assert 'class="btn authorize' in rendered  # Swagger UI drew the security scheme's button
    for path in ("/models", "/models/{sha256}", "/healthz", "/readyz"):
        assert f'data-path="{path}"' in rendered, path  # and every operation, from /openapi.json
