"""k8s/train: the training Job rendered by kustomize, validated offline against the Kubernetes schemas, checked
against the `neumeta train` parser and the CUDA image, and its command run here as a restarted pod would run it:
killed in the middle, started again unchanged, it resumes from the state on the volume."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from neumeta_core import checkpoint
from neumeta_core.resume import state_path
from service.cli import parser
from tests.deploy.conftest import ROOT
from tests.deploy.test_k8s import GPU, K8S_VERSIONS, only
from tests.processes import BIN, kill_tree
from tests.service.test_fashion import TINY, tiny_fashion  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: install kubectl (it carries kustomize) to render k8s/train")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s/train")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize k8s/train failed:\n{out.stderr}"
    return [obj for obj in yaml.safe_load_all(out.stdout) if obj]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = only(objects, "Job")["spec"]["template"]["spec"]["containers"]
    return found


def _at(args: argparse.Namespace, here: str, volume: str) -> argparse.Namespace:
    """The parsed paths moved back from `here` to the claim's mount path."""
    for name in ("out", "data_dir", "cache"):
        setattr(args, name, Path(str(getattr(args, name)).replace(here, volume)))
    return args


def mounts(objects: list[dict[str, Any]]) -> dict[str, str]:
    """Mount path -> the PersistentVolumeClaim behind it."""
    pod = only(objects, "Job")["spec"]["template"]["spec"]
    volumes = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in volumes}
    return {m["mountPath"]: claims[m["name"]] for m in container(objects)["volumeMounts"] if m["name"] in claims}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_offline(objects, version):
    assert {o["kind"] for o in objects} == {"Namespace", "PersistentVolumeClaim", "Job"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_command_is_a_resuming_neumeta_train_with_its_files_on_the_claim(objects, tmp_path):
    command = container(objects)["command"]
    assert command[:2] == ["neumeta", "train"]
    (volume,) = mounts(objects)  # the CLI's own parser accepts it on a fresh claim: an empty directory
    args = _at(parser().parse_args([a.replace(volume, str(tmp_path)) for a in command[1:]]), str(tmp_path), volume)
    assert args.auto_resume and not args.resume  # a first start trains, a restart resumes
    assert args.device == "cuda" and args.save_every <= 500
    claim = only(objects, "PersistentVolumeClaim")["metadata"]["name"]
    volume = {path for path, name in mounts(objects).items() if name == claim}
    for path in (args.out, args.data_dir, args.cache):
        assert any(Path(path).is_relative_to(v) for v in volume), f"{path} is not on the claim {claim}"
    limits = container(objects)["resources"]["limits"]
    assert int(limits[GPU]) == args.nproc  # one process per GPU of the pod


def test_the_job_retries_what_a_retry_can_mend_and_stops_on_bad_input(objects, dockerfiles):
    job = only(objects, "Job")
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["backoffLimit"] >= 3 and pod["restartPolicy"] == "Never"
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"] == {
        "containerName": container(objects)["name"],
        "operator": "In",
        "values": [2],  # the CLI's status for bad input (service/cli.py)
    }
    assert pod["terminationGracePeriodSeconds"] >= 60  # SIGTERM: the state is written before the run stops
    image = dockerfiles["docker/Dockerfile.cuda"].final
    (user,) = image.all("USER")
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    assert container(objects)["image"] == "neumeta-serve:cuda"  # the CUDA image, where torchrun and neumeta are


def test_the_jobs_command_restarted_after_a_kill_resumes_and_finishes(objects, tiny_fashion, tmp_path):  # noqa: F811
    """The command as the pod runs it, here: the claim is a temp dir holding the data set, the CPU stands in for
    CUDA, and the recipe is shortened to a smoke test. Killed (every process) once its state is saved, the same
    command resumes from it and finishes."""
    command = container(objects)["command"]
    (volume,) = mounts(objects)
    (tmp_path / "data").mkdir()
    shutil.copytree(tiny_fashion, tmp_path / "data" / "fashion-mnist")
    local = [a.replace(volume, str(tmp_path)) for a in command]
    local[local.index("--device") + 1] = "cpu"
    argv = [str(BIN), *local[1:], *TINY, "--slim-epochs", "4", "--save-every", "2"]
    out = Path(local[local.index("--out") + 1])
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while first.poll() is None and not state_path(out).exists():
        time.sleep(0.01)
    kill_tree(first.pid)
    first.wait(timeout=60)
    assert state_path(out).exists() and not out.exists()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {state_path(out)}" in again.stderr
    assert checkpoint.load(out).target.dataset == "idx" and not state_path(out).exists()
