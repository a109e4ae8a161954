"""The real service, started as the cpu overlay's Deployment starts it, probed as Kubernetes, Docker and
compose would probe it (each command as written in its file, pointed at 127.0.0.1 and a free port)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

from tests.deploy.conftest import find_url, local, settings_from, url_path
from tests.deploy.test_k8s import api, container_env
from tests.processes import free_port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_service_passes_its_probes_and_drains_in_time(
    rendered, dockerfiles, compose, redis_server, routes, monkeypatch, tmp_path
):
    objects = rendered["cpu"]
    deployment = api(objects)
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):  # fail now, not after the startup budget
        assert c[kind]["httpGet"]["path"] in routes, f"{kind} asks {c[kind]['httpGet']['path']}; not among {routes}"
    env = container_env(objects, c) | {"NEUMETA_REDIS_URL": redis_server.url}
    grace = settings_from(env, monkeypatch).shutdown_grace
    port = free_port()
    workdir, home = tmp_path / "workdir", tmp_path / "home"  # the image's HOME is its one writable place
    workdir.mkdir()
    home.mkdir()
    proc = subprocess.Popen(
        local(c["command"], port),
        cwd=workdir,
        env={k: v for k, v in os.environ.items() if not k.startswith("NEUMETA_")} | env | {"HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        # startup probe: it must pass within the budget the Deployment gives it
        startup = c["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        deadline = time.monotonic() + budget
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = get(base + startup["httpGet"]["path"])
            except OSError:
                status = None
            if status == 200:
                break
            time.sleep(startup["periodSeconds"] / 4)
        assert status == 200, f"not ready within the startup probe's {budget} s"
        status, body = get(base + c["readinessProbe"]["httpGet"]["path"])
        assert status == 200 and json.loads(body)["redis"] == "ok"
        assert get(base + c["livenessProbe"]["httpGet"]["path"])[0] == 200
        scrape_path = deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
        status, metrics = get(base + scrape_path)
        assert status == 200 and b"neumeta_http_request_duration_seconds" in metrics

        # the images' HEALTHCHECK and compose's healthcheck, run as written
        checks = [df.healthcheck for df in dockerfiles.values()]
        checks.append(compose["services"]["neumeta"]["healthcheck"]["test"][1:])
        for check in checks:
            assert url_path(find_url(" ".join(check))) in (url_path(u) for u in (base + "/healthz", base + "/readyz"))
            r = subprocess.run(local(check, port), capture_output=True, text=True, timeout=10)
            assert r.returncode == 0, f"{check} failed: {r.stderr}"

        # SIGTERM (sent after the preStop sleep): the process is gone before the kubelet would kill it
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        budget = pod["terminationGracePeriodSeconds"] - pre_stop
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=budget)
        assert time.monotonic() - start <= min(budget, grace + 5)  # timing-ok: the Deployment kills the pod then
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"Traceback" not in proc.stderr.read()
    assert not any(workdir.iterdir()), "the service wrote into its working directory (read-only in the image)"


def test_healthcheck_fails_when_the_service_is_down(dockerfiles):
    """The probes would notice: the image's HEALTHCHECK exits non-zero when nothing answers."""
    port = free_port()  # nothing listens there
    for df in dockerfiles.values():
        r = subprocess.run(local(df.healthcheck, port), capture_output=True, timeout=10)
        assert r.returncode != 0
