"""HTTP round trips through the real app, lifespan included (TestClient runs it)."""

import hashlib
import json
import time

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load as load_safetensors

from neumeta_core import export
from service.config import Settings
from service.main import create_app
from tests.service.conftest import metric

RANGE_HINT = "ratio must be a number in [0, 0.75]"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(device="cpu")), base_url="http://127.0.0.1") as c:
        yield c


def test_post_models_returns_a_runnable_onnx_of_the_right_width(client, split):
    r = client.post("/models?ratio=0.25")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    sha = hashlib.sha256(r.content).hexdigest()
    assert r.headers["etag"] == f'"{sha}"'
    assert r.headers["location"] == f"/models/{sha}"
    assert r.headers["x-neumeta-width"] == "24"
    assert r.headers["x-neumeta-ratio"] == "0.25"
    assert 'filename="digits_full-w24.onnx"' in r.headers["content-disposition"]
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


def test_width_and_json_body_name_the_same_model_as_ratio(client):
    by_ratio = client.post("/models?ratio=0.5")
    by_width = client.post("/models?width=16")
    by_body = client.post("/models", json={"width": 16})
    assert by_ratio.content == by_width.content == by_body.content
    assert by_body.headers["x-neumeta-cache"] == "hit"


def test_max_params_picks_the_largest_width_that_fits(client, bundled):
    budget = bundled.morph.param_count(20)
    r = client.post(f"/models?max_params={budget}")
    assert r.headers["x-neumeta-width"] == "20" and int(r.headers["x-neumeta-params"]) == budget
    r = client.post(f"/models?max_params={budget - 1}")
    assert r.headers["x-neumeta-width"] == "19"
    small = bundled.morph.param_count(bundled.target.min_width)
    r = client.post(f"/models?max_params={small - 1}")
    assert r.status_code == 422 and f"the smallest model has {small}" in r.json()["detail"]


@pytest.mark.parametrize("fmt,dtype", [("onnx", "float32"), ("onnx", "float16"), ("safetensors", "float32")])
def test_max_bytes_picks_the_largest_file_that_fits_in_the_format_and_dtype_asked(client, fmt, dtype):
    def get(**params):
        return client.get("/models", params={"format": fmt, "dtype": dtype, **params})

    twenty = get(width=20)
    assert twenty.status_code == 200
    size = len(twenty.content)
    exact = get(max_bytes=size)  # a budget of exactly a served file's size gets that file
    assert exact.headers["x-neumeta-width"] == "20" and exact.content == twenty.content
    assert get(max_bytes=size - 1).headers["x-neumeta-width"] == "19"
    largest = get(max_bytes=10**12)
    assert largest.headers["x-neumeta-width"] == "32"
    smallest = len(get(width=8).content)
    refused = get(max_bytes=smallest - 1)
    detail = refused.json()["detail"]
    assert refused.status_code == 422 and f"give max_bytes >= {smallest}" in detail and f"{fmt} {dtype}" in detail


def test_int8_is_served_as_quantised_onnx_and_refused_as_safetensors(client):
    r = client.get("/models", params={"width": 16, "dtype": "int8"})
    assert r.status_code == 200 and r.headers["content-disposition"].endswith('-w16-int8.onnx"')
    full = client.get("/models", params={"width": 16})
    assert len(r.content) < 0.6 * len(full.content) and r.headers["etag"] != full.headers["etag"]  # graph overhead
    assert client.get("/models", params={"width": 16, "dtype": "int8"}).headers["x-neumeta-cache"] == "hit"
    refused = client.get("/models", params={"width": 16, "dtype": "int8", "format": "safetensors"})
    assert refused.status_code == 422 and "format=onnx only" in refused.json()["detail"]
    assert "int8" in client.get("/models").json()[0]["dtypes"]


@pytest.mark.parametrize("value", ["-5", "0", "ten", "1.5", "9" * 400])
def test_bad_byte_budgets_are_422_with_the_valid_range(client, value):
    r = client.post(f"/models?max_bytes={value}")
    assert r.status_code == 422
    body = r.json()
    assert body["error"] and "max_bytes" in body["detail"]


def test_second_identical_request_is_a_byte_identical_cache_hit(client):
    first = client.post("/models?ratio=0.625")
    second = client.post("/models?ratio=0.625")
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
    assert RANGE_HINT in body["detail"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("query", "body", "says"),
    [
        ("ratio=0.5&width=16", None, "2 sizes given (ratio, width). Give exactly one of ratio, width, max_params"),
        ("width=3", None, "must lie in 8..32"),
        ("width=33", None, "must lie in 8..32"),
        ("width=1.5", None, "width='1.5' is not an integer"),
        ("ratio=0.5&format=tflite", None, "format='tflite' is not supported"),
        ("ratio=0.5&format=tflite", None, "format (onnx | safetensors)"),
        ("ratio=0.5&dtype=int4", None, "dtype (float32 | float16 | int8)"),
        ("ratio=0.5", {"width": 16}, "either in the query string or in a JSON body"),
        ("", {"width": 16, "colour": "red"}, "unknown parameter 'colour'"),
        ("", {"ratio": "half"}, RANGE_HINT),
        ("ratio=0.25&fromat=safetensors", None, "unknown parameter 'fromat'"),
        ("ratio=0.25&ratio=0.5", None, "'ratio' is given 2 times: give each parameter once"),
        ("", None, "no size given. Give exactly one of ratio, width, max_params or max_bytes"),
    ],
)
def test_invalid_requests_say_what_is_valid(client, query, body, says):
    r = client.post(f"/models?{query}", json=body) if body is not None else client.post(f"/models?{query}")
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request" and says in r.json()["detail"]
    assert "Value error" not in r.text and "Traceback" not in r.text
    if body is None:  # the GET form is validated by the same model
        g = client.get(f"/models?{query}") if query else client.post("/models?")
        assert g.status_code == 422 and says in g.json()["detail"]


def test_unknown_model_is_a_404_listing_the_loaded_ones(client):
    r = client.post("/models?ratio=0.5&model=resnet20")
    assert r.status_code == 404 and "loaded: digits_full" in r.json()["detail"]


def test_safetensors_and_float16(client, bundled):
    st = client.post("/models?width=12&format=safetensors")
    assert st.status_code == 200 and st.headers["content-disposition"].endswith('w12.safetensors"')
    tensors = load_safetensors(st.content)
    expected = export.served(bundled.graph(12), bundled.morph.state_dict(12))  # BatchNorm folded, as in the ONNX file
    assert tensors.keys() == expected.keys() and "conv1.conv.bias" in expected
    assert all(np.array_equal(tensors[k], expected[k]) for k in expected)
    full = client.post("/models?width=12")
    half = client.post("/models?width=12&dtype=float16")
    assert half.status_code == 200 and len(half.content) < 0.6 * len(full.content)
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    a = export.session(full.content).run(["logits"], {"input": x})[0]
    b = export.session(half.content).run(["logits"], {"input": x})[0]
    assert np.abs(a - b).max() < 0.05  # half-precision weights, float32 arithmetic
    half16 = load_safetensors(client.post("/models?width=12&format=safetensors&dtype=float16").content)
    assert half16["conv2.conv.weight"].dtype == np.float16


def test_get_by_sha_is_immutable_with_etag_and_ranges(client):
    made = client.post("/models?ratio=0.25")
    location, body = made.headers["location"], made.content
    r = client.get(location)
    assert r.status_code == 200 and r.content == body
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.headers["etag"] == made.headers["etag"]
    assert client.get(location, headers={"If-None-Match": made.headers["etag"]}).status_code == 304
    part = client.get(location, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == body[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(body)}"
    assert client.get(location, headers={"Range": "bytes=1000-"}).content == body[1000:]
    assert client.get(location, headers={"Range": "bytes=-10"}).content == body[-10:]
    bad = client.get(location, headers={"Range": f"bytes={len(body)}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(body)}"
    assert bad.json()["error"] == "range_not_satisfiable" and f"{len(body)} bytes" in bad.json()["detail"]
    other = client.get(location, headers={"Range": "bytes=0-9", "If-Range": '"another"'})
    assert other.status_code == 200 and other.content == body  # If-Range names another file: all of it


def test_get_unknown_sha_is_a_404_with_a_hint(client):
    r = client.get("/models/" + "0" * 64)
    assert r.status_code == 404 and "GET or POST /models" in r.json()["detail"]
    bad = client.get("/models/not-a-digest")
    assert bad.status_code == 422 and "'not-a-digest' is not a sha256: 64 lowercase hex digits" in bad.json()["detail"]
    assert "ratio" not in bad.json()["detail"]  # no size hint for a digest


def test_list_models_describes_the_checkpoint(client, bundled):
    [info] = client.get("/models").json()
    assert info["name"] == "digits_full" and info["digest"] == bundled.digest
    assert info["widths_allowed"] == {"min": 8, "max": 32, "step": 1}  # 8: below the trained range, served well
    assert info["widths_trained"] == {
        "min": 10,
        "max": 32,
        "step": 2,
        "held_out": [],
    }  # odd widths are never seen in training
    assert info["params"]["32"] == bundled.morph.param_count(32)
    assert info["accuracy"]["8"] == pytest.approx(bundled.accuracy[8])
    assert info["formats"] == ["onnx", "safetensors"] and info["max_ratio"] == 0.75
    assert {"conv1.conv.weight", "conv2.conv.weight", "conv3.conv.weight", "fc.weight"} <= set(info["generated"])


def test_health_and_readiness(client, bundled):
    for path in ("/healthz", "/v2/health/live"):
        assert client.get(path).json() == {"status": "ok"}
    for path in ("/readyz", "/v2/health/ready"):
        ready = client.get(path)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checkpoint": bundled.digest, "redis": "disabled"}


def test_metrics_names_and_route_templates(client):
    for _ in range(2):  # the second is a hit in memory, whichever tests ran before in this process
        assert client.post("/models?ratio=0.5").status_code == 200
    client.get("/models/" + "1" * 64)
    r = client.get("/metrics", follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "neumeta_http_request_duration_seconds",
        "neumeta_synthesis_stage_seconds",
        "neumeta_syntheses_total",
        "neumeta_cache_lookups_total",
        "neumeta_singleflight_joins_total",
        "neumeta_synthesis_queue_depth",
        "neumeta_syntheses_in_flight",
        "neumeta_bytes_served_total",
        "neumeta_redis_errors_total",
    ):
        assert f"# TYPE {name}" in text
    assert metric(text, 'neumeta_cache_lookups_total{result="hit",tier="memory"}') >= 1
    assert 'route="/models/{sha256}"' in text and "1111111111" not in text  # templates, never raw paths


def test_request_body_limit(client):
    r = client.post("/models", content=b"{" + b" " * 20000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


def test_readiness_fails_before_the_lifespan_has_run():
    app = create_app(Settings(device="cpu"))
    r = TestClient(app, base_url="http://127.0.0.1").get("/readyz")  # no `with`: no lifespan
    assert r.status_code == 503 and r.json()["error"] == "not_ready" and r.headers["retry-after"]


def test_api_keys_guard_models_routes_only():
    settings = Settings(device="cpu", api_keys="k-one,k-two")
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        for method, path in (("post", "/models?ratio=0.5"), ("get", "/models"), ("get", "/models/" + "0" * 64)):
            denied = getattr(c, method)(path)
            assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
            assert getattr(c, method)(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.post("/models?ratio=0.5", headers={"Authorization": "Bearer k-two"})
        assert ok.status_code == 200
        assert c.post("/models?ratio=2", headers={"Authorization": "Bearer k-one"}).status_code == 422
        for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready"):
            assert c.get(path).status_code == 200


def test_slow_synthesis_is_a_504_and_the_model_still_lands_in_the_cache():
    with TestClient(create_app(Settings(device="cpu", request_timeout=0.001)), base_url="http://127.0.0.1") as c:
        slow = c.post("/models?width=27")
        assert slow.status_code == 504 and slow.json()["error"] == "timeout"
        deadline = time.monotonic() + 120  # the synthesis finishes in the background and fills the cache
        while (again := c.post("/models?width=27")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert again.status_code == 200  # a hit, or a join of the synthesis as it finished
        third = c.post("/models?width=27")
        assert third.headers["x-neumeta-cache"] == "hit" and third.content == again.content


def test_openapi_documents_every_route(client):
    spec = client.get("/openapi.json").json()
    assert {"/models", "/models/{sha256}", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"} <= set(
        spec["paths"]
    )
    for method in ("get", "post"):
        params = {p["name"] for p in spec["paths"]["/models"][method]["parameters"]}
        assert {"ratio", "width", "max_params", "model", "format", "dtype"} <= params
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "a key of NEUMETA_API_KEYS; needed only when the service has keys",
    }
    import re

    for ref in re.findall(r'"\$ref": "([^"]+)"', json.dumps(spec)):  # every reference resolves in the document
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_two_checkpoints_are_served_side_by_side(mlp_checkpoint):
    from neumeta_core.checkpoint import BUNDLED

    settings = Settings(device="cpu", checkpoints=f"{BUNDLED},{mlp_checkpoint}")
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        names = [m["name"] for m in c.get("/models").json()]
        assert names == ["digits_full", "mlp"]
        default = c.post("/models?ratio=0.5")
        other = c.post("/models?ratio=0.5&model=mlp")
        assert default.headers["x-neumeta-model"] == "digits_full" and default.headers["x-neumeta-width"] == "16"
        assert other.headers["x-neumeta-model"] == "mlp" and other.headers["x-neumeta-width"] == "8"
        assert 'filename="mlp-w8.onnx"' in other.headers["content-disposition"]
        session = export.session(other.content)
        assert session.run(["logits"], {"input": np.zeros((2, 1, 8, 8), np.float32)})[0].shape == (2, 10)


def test_bfloat16_precision_is_its_own_model_and_keeps_its_accuracy(client, split):
    """NEUMETA_PRECISION changes the bytes, so it is part of the cache key and named in the file."""
    full = client.post("/models?ratio=0.25")
    with TestClient(create_app(Settings(device="cpu", precision="bfloat16")), base_url="http://127.0.0.1") as c:
        half = c.post("/models?ratio=0.25")
    assert half.status_code == 200 and half.headers["etag"] != full.headers["etag"]
    meta = {p.key: p.value for p in onnx.load_from_string(half.content).metadata_props}
    assert meta["neumeta.precision"] == "bfloat16"
    x, y = split.x_test.numpy(), split.y_test.numpy()
    assert abs(export.accuracy(half.content, x, y) - export.accuracy(full.content, x, y)) <= 1.0


@pytest.mark.parametrize("query", ["", "?ratio=abc", "?ratio=0.2&width=3"])
def test_the_rule_is_stated_once_with_the_valid_ranges(client, query):
    detail = client.post(f"/models{query}").json()["detail"]
    assert detail.lower().count("give exactly one of ratio, width, max_params or max_bytes") == 1
    assert RANGE_HINT in detail and "width must be an integer in 8..32" in detail


def test_the_get_form_answers_what_post_does_and_is_cacheable(client):
    post = client.post("/models?width=14&dtype=float16")
    get = client.get("/models?width=14&dtype=float16")
    assert get.status_code == 200 and get.content == post.content
    same = {k: v for k, v in get.headers.items() if k not in ("date", "x-neumeta-cache")}
    assert same == {k: v for k, v in post.headers.items() if k not in ("date", "x-neumeta-cache")}
    assert get.headers["cache-control"] == "public, max-age=60"  # a shared cache revalidates after a minute
    etag = get.headers["etag"]
    assert etag == f'"{hashlib.sha256(get.content).hexdigest()}"'  # strong
    not_modified = client.get("/models?width=14&dtype=float16", headers={"If-None-Match": f'W/{etag}, "x"'})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag and not_modified.headers["cache-control"] == "public, max-age=60"
    assert client.get("/models?width=14&dtype=float16", headers={"If-None-Match": '"other"'}).status_code == 200


def test_conditional_post_follows_rfc_9110(client):
    """If-None-Match that matches is 304 only for GET and HEAD; on POST it is 412 (RFC 9110 13.1.2)."""
    made = client.post("/models?width=15")
    etag = made.headers["etag"]
    for header in ({"If-None-Match": etag}, {"If-None-Match": "*"}, {"If-Match": '"another"'}):
        r = client.post("/models?width=15", headers=header)
        assert r.status_code == 412 and r.json()["error"] == "precondition_failed", header
    assert client.post("/models?width=15", headers={"If-Match": etag}).content == made.content
    assert client.post("/models?width=15", headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get(made.headers["location"], headers={"If-Match": '"another"'}).status_code == 412


def test_head_works_wherever_get_does(client):
    made = client.get("/models?width=16")
    for path in (
        "/models?width=16",
        made.headers["location"],
        "/models",
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/metrics",
        "/openapi.json",
        "/docs",
    ):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers.get("etag") == got.headers.get("etag"), path
    assert client.head("/models?width=16").headers["content-length"] == str(len(made.content))
    missing = client.head("/no/such/route")
    assert missing.status_code == 404 and missing.content == b""


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("get", "/no/such/route", {}, 404, "not_found"),
        ("delete", "/models", {}, 405, "method_not_allowed"),
        ("post", "/healthz", {}, 405, "method_not_allowed"),
        (
            "post",
            "/models",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        (
            "post",
            "/models",
            {"content": b"[" * 5000 + b"]" * 5000, "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        (
            "post",
            "/models",
            {"content": b"[1, 2]", "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        (
            "post",
            "/models",
            {"content": b"ratio=0.5", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ("post", "/models", {"content": iter([b'{"ratio": ', b" " * 20000, b"0.5}"])}, 413, "payload_too_large"),
        ("get", "/models/" + "A" * 64, {}, 422, "invalid_request"),
    ],
    ids=["route", "method", "method-health", "json", "nested-json", "json-array", "media-type", "chunked-413", "sha"],
)
def test_every_error_is_the_envelope(client, method, path, kwargs, status, code):
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and set(r.json()) == {"error", "detail"}
    assert r.json()["error"] == code and r.json()["detail"]
    if status == 405:
        assert "GET" in r.headers["allow"] and r.headers["allow"] in r.json()["detail"]
    if path == "/models" and method == "delete":
        assert r.headers["allow"] == "GET, HEAD, POST"


def test_docs_work_offline_with_an_authorize_button(client):
    """Every script, style and icon of /docs comes from this server, and the schema declares the bearer key."""
    import re

    page = client.get("/docs").text
    urls = re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r"url: '([^']+)'", page)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert client.get("/redoc").status_code == 404  # not offered: it loads fonts from a CDN
    security = client.get("/openapi.json").json()["paths"]["/models"]["post"]["security"]
    assert security == [{"bearer": []}]
