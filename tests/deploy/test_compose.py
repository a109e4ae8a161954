"""docker-compose.yml and its GPU override: parsed, and every name in them checked against the app and the images.

No Docker engine runs here, so the files are checked as data: the four services with healthchecks, the
wiring between them, and each path, port and NEUMETA_* variable against the code (docs/deploy.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.conftest import ROOT, find_url, settings_from, url_path

SERVICES = {"redis", "neumeta", "proxy", "prometheus"}
TEMPLATE = ROOT / "docker/nginx/neumeta.conf.template"


def seconds(duration: str) -> float:
    """A compose duration ('25s', '1m30s') in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_four_services_each_with_a_healthcheck(compose):
    assert set(compose["services"]) == SERVICES
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), check["test"]


def test_startup_order_waits_for_health(compose):
    services = compose["services"]
    assert services["neumeta"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert services["proxy"]["depends_on"] == {"neumeta": {"condition": "service_healthy"}}
    assert services["prometheus"]["depends_on"] == {"neumeta": {"condition": "service_healthy"}}


def test_redis_is_a_bounded_lru_cache(compose):
    command = compose["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    assert flag(command, "--maxmemory-policy") == "allkeys-lru"
    assert re.fullmatch(r"\d+(mb|gb)", flag(command, "--maxmemory"))
    assert flag(command, "--save") == "" and flag(command, "--appendonly") == "no"


def test_service_environment_names_settings_the_app_has(compose, settings_env, monkeypatch):
    env = compose["services"]["neumeta"]["environment"]
    assert set(env) <= settings_env, f"unknown to service/config.py: {sorted(set(env) - settings_env)}"
    settings = settings_from({k: str(v) for k, v in env.items()}, monkeypatch)  # values valid, too
    redis_url = urlsplit(settings.redis_url or "")
    assert redis_url.hostname == "redis" and "redis" in compose["services"], "NEUMETA_REDIS_URL names the redis service"
    assert redis_url.port == 6379


def test_service_port_healthcheck_and_grace_match_the_image(compose, dockerfiles, routes, monkeypatch):
    service = compose["services"]["neumeta"]
    image = dockerfiles[service["build"]["dockerfile"]]
    port = int(image.command[image.command.index("--port") + 1])
    assert [p.rsplit(":", 1)[1] for p in service["ports"]] == [str(port)]
    url = find_url(" ".join(service["healthcheck"]["test"]))
    assert url_path(url) in routes, f"healthcheck asks {url}; not among {routes}"
    assert urlsplit(url).port == port
    grace = settings_from({k: str(v) for k, v in service["environment"].items()}, monkeypatch).shutdown_grace
    assert seconds(service["stop_grace_period"]) > grace, "compose kills before in-flight requests finish"


def test_read_only_root_has_a_writable_home(compose, dockerfiles):
    """read_only: true works only because the image points HOME (and temp files) at the tmpfs."""
    service = compose["services"]["neumeta"]
    assert service["read_only"] is True
    image = dockerfiles[service["build"]["dockerfile"]]
    env = " ".join(image.final.all("ENV"))
    home = re.search(r"HOME=(\S+)", env)
    assert home and home.group(1) in service["tmpfs"]
    assert service["user"].split(":")[0] == image.final.all("USER")[0].split(":")[0]


def test_prometheus_scrapes_the_service(compose, dockerfiles, routes):
    prom = compose["services"]["prometheus"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in prom["volumes"]}
    config_path = ROOT / mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] in routes
    image = dockerfiles[compose["services"]["neumeta"]["build"]["dockerfile"]]
    port = image.command[image.command.index("--port") + 1]
    assert job["static_configs"] == [{"targets": [f"neumeta:{port}"]}]


def test_gpu_override_requests_a_gpu_and_the_cuda_image(compose_gpu, dockerfiles, monkeypatch):
    service = compose_gpu["services"]["neumeta"]
    assert service["build"]["dockerfile"] in dockerfiles and Path(ROOT / service["build"]["dockerfile"]).is_file()
    assert "cuda" in service["build"]["dockerfile"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] >= 1 and "gpu" in device["capabilities"]
    assert settings_from(service["environment"], monkeypatch).device == "cuda"
    assert seconds(service["healthcheck"]["start_period"]) >= seconds("60s")


@pytest.mark.parametrize("duration, value", [("25s", 25), ("1m30s", 90), ("500ms", 0.5)])
def test_durations(duration, value):
    assert seconds(duration) == value


def test_the_proxy_renders_the_shipped_template_in_front_of_the_service(compose, dockerfiles):
    proxy = compose["services"]["proxy"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in proxy["volumes"]}
    assert (ROOT / mounts[f"/etc/nginx/templates/{TEMPLATE.name}"]).resolve() == TEMPLATE
    env = {k: str(v) for k, v in proxy["environment"].items()}
    assert set(re.findall(r"\$\{(\w+)\}", TEMPLATE.read_text())) == set(env)
    host, port = env["NEUMETA_UPSTREAM"].split(":")
    image = dockerfiles[compose["services"][host]["build"]["dockerfile"]]
    assert port == image.command[image.command.index("--port") + 1]
    assert [p.rsplit(":", 1)[1] for p in proxy["ports"]] == [env["NGINX_PORT"]]
    path = url_path(find_url(" ".join(proxy["healthcheck"]["test"])))
    assert f"location = {path} " in TEMPLATE.read_text()
    assert proxy["read_only"] is True and "/etc/nginx/conf.d" in proxy["tmpfs"]  # also hides the default server
    assert any(env["NGINX_CACHE_DIR"].startswith(t + "/") for t in proxy["tmpfs"])
