"""The shipped nginx config (docker/nginx/neumeta.conf.template), run by Debian's nginx in front of a real
`neumeta serve`: repeats of a size request and of a content address are answered by nginx without reaching
the service, a new checkpoint changes the answer to the same URL after max-age while content addresses keep
theirs, API keys hold, and nginx's own errors use the service's envelope."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from neumeta_core.checkpoint import BLOCK
from tests.processes import Nginx, free_port
from tests.service.conftest import metric, serving


def requests_seen(service_url: str, route: str, method: str = "GET") -> float:
    """How many requests for `route` the service itself answered (its own histogram)."""
    text = httpx.get(f"{service_url}/metrics").text
    labels = f'method="{method}",route="{route}",status_class="2xx"'
    return metric(text, f"neumeta_http_request_duration_seconds_count{{{labels}}}")


@pytest.fixture
def proxied(tmp_path):
    port = free_port()
    with serving(port=port, NEUMETA_MAX_AGE="3600") as live:  # nothing expires during the test
        proxy = Nginx(tmp_path / "nginx", f"127.0.0.1:{port}")
        proxy.start()
        try:
            yield live, proxy
        finally:
            proxy.stop()


def test_repeats_are_served_by_nginx(proxied):
    live, proxy = proxied
    first = httpx.get(f"{proxy.url}/models", params={"ratio": 0.25}, timeout=120)
    second = httpx.get(f"{proxy.url}/models", params={"ratio": 0.25}, timeout=120)
    assert first.status_code == second.status_code == 200 and second.content == first.content
    assert (first.headers["x-cache-status"], second.headers["x-cache-status"]) == ("MISS", "HIT")
    assert second.headers["etag"] == f'"{hashlib.sha256(second.content).hexdigest()}"'
    assert requests_seen(live.url, "/models") == 1  # the second never reached Python
    head = httpx.head(f"{proxy.url}/models", params={"ratio": 0.25})
    assert head.headers["x-cache-status"] == "HIT" and head.headers["content-length"] == str(len(first.content))
    location = first.headers["location"]
    by_sha = [httpx.get(f"{proxy.url}{location}") for _ in range(2)]
    assert [r.headers["x-cache-status"] for r in by_sha] == ["MISS", "HIT"]
    assert all(r.content == first.content for r in by_sha) and requests_seen(live.url, "/models/{sha256}") == 1
    part = httpx.get(f"{proxy.url}{location}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == first.content[100:200]
    posts = [httpx.post(f"{proxy.url}/models", params={"ratio": 0.25}) for _ in range(2)]
    assert all(r.headers.get("x-cache-status") != "HIT" for r in posts)  # POST is never cached
    assert requests_seen(live.url, "/models", "POST") == 2


def test_a_new_checkpoint_changes_the_size_answer_but_never_a_content_address(tmp_path):
    """After max-age nginx revalidates by ETag: the same checkpoint answers 304 (nginx keeps its copy), a new
    one answers new bytes under the same URL. The old file's content address keeps its bytes."""
    port = free_port()
    proxy = Nginx(tmp_path / "nginx", f"127.0.0.1:{port}")
    proxy.start()
    try:
        with serving(port=port, NEUMETA_MAX_AGE="1") as live:
            old = httpx.get(f"{proxy.url}/models", params={"width": 16}, timeout=120)
            assert httpx.get(f"{proxy.url}{old.headers['location']}").status_code == 200  # now cached too
            time.sleep(2.5)  # past max-age (nginx counts whole seconds: up to 2 s after storing)
            again = httpx.get(f"{proxy.url}/models", params={"width": 16}, timeout=120)
            assert again.headers["x-cache-status"] == "REVALIDATED" and again.content == old.content
            assert requests_seen(live.url, "/models") == 1  # the revalidation was a 304, not a 200
        with serving(port=port, NEUMETA_MAX_AGE="1", NEUMETA_CHECKPOINTS=str(BLOCK)) as live:
            direct = httpx.get(f"{live.url}/models", params={"width": 16}, timeout=120)
            time.sleep(2.5)
            new = httpx.get(f"{proxy.url}/models", params={"width": 16}, timeout=120)
            assert new.content == direct.content != old.content and new.headers["x-cache-status"] == "EXPIRED"
            kept = httpx.get(f"{proxy.url}{old.headers['location']}")  # immutable: nginx still has it
            assert kept.headers["x-cache-status"] == "HIT" and kept.content == old.content
    finally:
        proxy.stop()


def test_api_keys_hold_through_the_proxy(tmp_path):
    port = free_port()
    with serving(port=port, NEUMETA_API_KEYS="key-a,key-b") as live:
        proxy = Nginx(tmp_path / "nginx", f"127.0.0.1:{port}")
        proxy.start()
        try:
            url = f"{proxy.url}/models?width=20"
            a = {"Authorization": "Bearer key-a"}
            assert [httpx.get(url, headers=a, timeout=120).headers["x-cache-status"] for _ in range(2)] == [
                "MISS",
                "HIT",
            ]
            for headers in ({}, {"Authorization": "Bearer wrong"}):  # a cached file is not handed to them
                denied = httpx.get(url, headers=headers)
                assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
            b = httpx.get(url, headers={"Authorization": "Bearer key-b"}, timeout=120)
            assert b.status_code == 200 and b.headers["x-cache-status"] != "HIT"  # Vary: another key, another entry
        finally:
            proxy.stop()
    assert live.proc.returncode is not None


def test_errors_keep_the_envelope_and_are_not_cached(proxied):
    live, proxy = proxied
    bad = [httpx.get(f"{proxy.url}/models", params={"ratio": 0.9}) for _ in range(2)]
    assert [r.status_code for r in bad] == [422, 422] and all(r.json()["error"] == "invalid_request" for r in bad)
    assert all(r.headers["x-cache-status"] == "MISS" for r in bad)
    assert httpx.get(f"{proxy.url}/nginx-health").json() == {"status": "ok"}
    live.proc.terminate()
    live.proc.wait(timeout=120)
    down = httpx.get(f"{proxy.url}/models", params={"width": 9})
    assert down.status_code == 503 and down.json()["error"] == "unavailable" and down.headers["retry-after"] == "5"
