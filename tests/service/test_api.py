"""HTTP round trips through the real app, lifespan included (TestClient runs it)."""

import hashlib

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from neumeta_core import export
from service.config import Settings
from service.main import create_app


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(device="cpu")), base_url="http://127.0.0.1") as c:
        yield c


def test_post_models_returns_a_runnable_onnx_of_the_right_width(client, split):
    r = client.post("/models?ratio=0.25")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
    assert r.headers["x-neumeta-width"] == "24"
    assert r.headers["x-neumeta-ratio"] == "0.25"
    assert 'filename="digits_cnn-w24.onnx"' in r.headers["content-disposition"]
    model = onnx.load_from_string(r.content)
    onnx.checker.check_model(model)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert int(r.headers["x-neumeta-params"]) == params
    logits = export.session(r.content).run(["logits"], {"input": split.x_test[:64].numpy()})[0]
    assert logits.shape == (64, 10)
    assert (logits.argmax(1) == split.y_test[:64].numpy()).mean() > 0.9


def test_rounding_reports_the_ratio_actually_served(client):
    r = client.post("/models?ratio=0.3")  # (1 - 0.3) * 32 = 22.4 -> 22
    assert r.headers["x-neumeta-width"] == "22"
    assert float(r.headers["x-neumeta-ratio"]) == pytest.approx(1 - 22 / 32, abs=1e-5)


def test_second_identical_request_is_a_byte_identical_cache_hit(client):
    first = client.post("/models?ratio=0.5")
    second = client.post("/models?ratio=0.5")
    assert first.headers["x-neumeta-cache"] == "miss"
    assert second.headers["x-neumeta-cache"] == "hit"
    assert first.content == second.content
    assert first.headers["etag"] == second.headers["etag"]


@pytest.mark.parametrize("query", ["ratio=-0.1", "ratio=1", "ratio=nan", "ratio=inf", "ratio=abc", "ratio=", ""])
def test_bad_ratio_is_a_422_naming_the_valid_range(client, query):
    r = client.post(f"/models?{query}")
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_request"
    assert "ratio must be a number in [0, 0.875]" in body["detail"]
    assert "Traceback" not in r.text


def test_bad_requests_do_not_disturb_the_cache(client):
    good = client.post("/models?ratio=0.75")
    for q in ("ratio=1", "ratio=abc"):
        client.post(f"/models?{q}")
    again = client.post("/models?ratio=0.75")
    assert again.headers["x-neumeta-cache"] == "hit" and again.content == good.content


def test_health_and_readiness(client, bundled):
    assert client.get("/healthz").json() == {"status": "ok", "checkpoint": None}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checkpoint"] == bundled.digest


def test_metrics_count_cache_results(client):
    client.post("/models?ratio=0.5")
    r = client.get("/metrics", follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'neumeta_cache_requests_total{result="hit"}' in text
    assert 'neumeta_synthesis_stage_seconds_count{stage="export"}' in text


def test_readiness_fails_before_the_lifespan_has_run():
    app = create_app(Settings(device="cpu"))
    r = TestClient(app, base_url="http://127.0.0.1").get("/readyz")  # no `with`: no lifespan
    assert r.status_code == 503 and r.json()["error"] == "not_ready"
