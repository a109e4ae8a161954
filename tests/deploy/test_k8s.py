"""k8s/: each overlay rendered by kustomize, validated offline against the Kubernetes schemas, and checked
against the app (probe paths, port, NEUMETA_* names and values) and the images (user, command, port)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from tests.deploy.conftest import OVERLAYS, ROOT, settings_from

TEMPLATE = ROOT / "docker/nginx/neumeta.conf.template"

# the oldest release with the preStop sleep action on by default (beta), and the newest schemas on hand
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
GPU = "nvidia.com/gpu"


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployments(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "Deployment"]


def api(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment whose container runs `neumeta serve`."""
    (found,) = [d for d in deployments(objects) if containers(d)[0].get("command", [])[:2] == ["neumeta", "serve"]]
    return found


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment the container starts with: its envFrom ConfigMaps, then env (Secrets resolved)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(only(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            secret = only(objects, "Secret", ref["name"])
            assert ref["key"] in secret.get("stringData", {}) | secret.get("data", {}), f"no key {ref['key']}"
            env[var["name"]] = secret.get("stringData", {}).get(ref["key"], "")
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_offline(rendered, overlay, version):
    objects = rendered[overlay]
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_validation_is_strict():
    """The validator catches a misspelt field, which the API server would otherwise drop or refuse."""
    probe = {"httpGet": {"path": "/healthz", "port": 8000}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}
    pod["spec"] = {"containers": [{"name": "c", "image": "i", "readinessProbes": probe}]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_objects_a_deployment_needs(rendered, overlay):
    objects = rendered[overlay]
    kinds = sorted(f"{o['apiVersion']} {o['kind']}" for o in objects)
    for kind in (
        "apps/v1 Deployment",
        "v1 Service",
        "v1 ConfigMap",
        "v1 Secret",
        "autoscaling/v2 HorizontalPodAutoscaler",
        "policy/v1 PodDisruptionBudget",
        "v1 Namespace",
    ):
        assert kind in kinds, f"{overlay} renders no {kind}: {kinds}"
    assert len(deployments(objects)) == 3, "the API, Redis and the caching proxy"
    namespace = only(objects, "Namespace")["metadata"]
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {namespace["name"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_resources_and_a_restricted_security_context(rendered, overlay):
    for deployment in deployments(rendered[overlay]):
        pod = deployment["spec"]["template"]["spec"]
        pod_security = pod.get("securityContext", {})
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False
        for c in containers(deployment):
            where = f"{overlay}: {deployment['metadata']['name']}/{c['name']}"
            assert "readinessProbe" in c and "livenessProbe" in c, f"{where} lacks a probe"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"{where}: no {kind}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_security.get("runAsUser", 1)) != 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("privileged", False), where
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert mounts, f"{where}: a read-only root needs somewhere to write"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_port_and_command_match_the_app_and_image(rendered, overlay, routes, dockerfiles):
    deployment = api(rendered[overlay])
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c[kind]["httpGet"]
        assert probe["path"] in routes, f"{overlay} {kind} asks {probe['path']}; not among {routes}"
        assert probe["port"] in ports or probe["port"] in ports.values(), f"{kind} port {probe['port']} not declared"
    assert c["livenessProbe"]["httpGet"]["path"] != c["readinessProbe"]["httpGet"]["path"]
    image = next(df for df in dockerfiles.values() if df.command[:2] == c["command"][:2])
    assert c["command"] == image.command, "the Deployment runs the image's own command"
    port = int(c["command"][c["command"].index("--port") + 1])
    assert list(ports.values()) == [port]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in routes and int(annotations["prometheus.io/port"]) == port
    uid = int(image.final.all("USER")[0].split(":")[0])
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_names_and_values_are_settings(rendered, overlay, settings_env, monkeypatch):
    objects = rendered[overlay]
    (c,) = api(objects)["spec"]["template"]["spec"]["containers"]
    env = container_env(objects, c)
    assert set(env) <= settings_env, f"unknown to service/config.py: {sorted(set(env) - settings_env)}"
    settings = settings_from(env, monkeypatch)
    assert settings.device == ("cuda" if overlay == "gpu" else "cpu")
    # NEUMETA_REDIS_URL reaches the Redis Service, which selects the Redis pods
    url = urlsplit(settings.redis_url or "")
    service = only(objects, "Service", url.hostname)
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    redis = next(d for d in deployments(objects) if selects(service["spec"]["selector"], pod_labels(d)))
    (redis_container,) = containers(redis)
    assert {p["name"] for p in redis_container["ports"]} >= {p["targetPort"] for p in service["spec"]["ports"]}


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def component(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [d for d in deployments(objects) if pod_labels(d).get("app.kubernetes.io/component") == name]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_proxy_runs_the_shipped_config_in_front_of_the_api(rendered, overlay):
    """The ConfigMap holds docker/nginx's template byte for byte, mounted where the image renders templates;
    every variable the template names is set, and its upstream is the API's Service and port; the probes
    ask the path the template serves itself; the proxy Service selects the proxy pods only."""
    objects = rendered[overlay]
    proxy = component(objects, "proxy")
    pod = proxy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    config = only(objects, "ConfigMap", volume["configMap"]["name"])
    template = TEMPLATE.read_text()
    assert config["data"] == {TEMPLATE.name: template}
    mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == "/etc/nginx/templates"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert set(re.findall(r"\$\{(\w+)\}", template)) == set(env)
    host, port = env["NEUMETA_UPSTREAM"].split(":")
    api_service = only(objects, "Service", host)
    assert selects(api_service["spec"]["selector"], pod_labels(api(objects)))
    assert int(port) in [p["port"] for p in api_service["spec"]["ports"]]
    listen = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert list(listen.values()) == [int(env["NGINX_PORT"])]
    for kind in ("readinessProbe", "livenessProbe"):
        path = c[kind]["httpGet"]["path"]
        assert f"location = {path} " in template, f"{kind} asks {path}, which the template does not serve"
    cache = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "cache")
    assert env["NGINX_CACHE_DIR"].startswith(cache + "/"), "the cache lives on its own volume"
    service = only(objects, "Service", proxy["metadata"]["name"])
    assert selects(service["spec"]["selector"], pod_labels(proxy))
    assert not selects(service["spec"]["selector"], pod_labels(api(objects)))
    assert (
        pod.get("enableServiceLinks") is False
        and api(objects)["spec"]["template"]["spec"]["enableServiceLinks"] is False
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_hpa_and_pdb_point_at_the_api(rendered, overlay):
    objects = rendered[overlay]
    deployment = api(objects)
    labels, name = pod_labels(deployment), deployment["metadata"]["name"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = only(objects, "Service", name)
    assert selects(service["spec"]["selector"], labels)
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in c["ports"]}
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pdb = only(objects, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    for other in deployments(objects):
        if other is not deployment:
            assert not selects(service["spec"]["selector"], pod_labels(other)), "the API Service selects Redis too"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_service_shutdown(rendered, overlay, monkeypatch):
    objects = rendered[overlay]
    pod = api(objects)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    grace = settings_from(container_env(objects, c), monkeypatch).shutdown_grace
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    # SIGTERM comes after preStop; the kill must not come before the service's own grace has run out
    assert pre_stop + grace <= pod["terminationGracePeriodSeconds"] <= pre_stop + grace + 15


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_evicts_as_compose_does(rendered, overlay, compose):
    objects = rendered[overlay]
    (c,) = containers(component(objects, "cache"))
    assert c["args"] == compose["services"]["redis"]["command"][1:]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_is_built_by_a_dockerfile_of_the_repo(rendered, overlay, compose, compose_gpu, dockerfiles):
    (c,) = api(rendered[overlay])["spec"]["template"]["spec"]["containers"]
    services = [f["services"]["neumeta"] for f in (compose, compose_gpu)]
    built = {s["image"]: s["build"]["dockerfile"] for s in services}
    assert c["image"] in built, f"{c['image']} is built by neither compose file: {built}"
    dockerfile = dockerfiles[built[c["image"]]]
    assert ("cuda" in dockerfile.path) == (overlay == "gpu")


def test_gpu_overlay_asks_for_one_gpu_on_a_gpu_node(rendered):
    pod = api(rendered["gpu"])["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"][GPU] == 1
    assert pod["nodeSelector"]
    assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    hpa = only(rendered["gpu"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] <= only(rendered["cpu"], "HorizontalPodAutoscaler")["spec"]["maxReplicas"]


def test_cpu_overlay_asks_for_no_gpu(rendered):
    for deployment in deployments(rendered["cpu"]):
        pod = deployment["spec"]["template"]["spec"]
        assert "tolerations" not in pod and "nodeSelector" not in pod
        for c in containers(deployment):
            assert GPU not in c["resources"].get("limits", {}) and GPU not in c["resources"].get("requests", {})
