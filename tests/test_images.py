"""The two images, built here (docker/images.sh, with podman where no docker engine answers) and run
as a cluster would run them: as uid 10001 with the securityContext the chart and the operator write
(read-only root, all capabilities dropped, no privilege escalation), writable only where a volume is.

- the operator image runs the real operator against a sandbox API: liveness, metrics, and the
  Deployment it creates for a SelfHealingModel;
- the model-server image runs the serving pod the operator generates (TorchServe + the selfheal
  handler): predictions, the describe API with the drift status, metrics;
- the model-server image runs the healing Job the operator generates: a candidate adapter in the
  registry and the result in the termination message;
- a Dockerfile that leaves a package out of the build context fails to build, with a message saying so.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from examples.fraud.generator import World, sample
from examples.fraud.train import build_served
from model_handler.registry import AdapterRegistry
from model_handler.traffic import TrafficStore
from sandbox import server as sandbox_server
from sandbox.env import free_port
from sandbox.pods import POD_NETWORK, AddressPool
from sandbox.podman import pod_container, podman
from shm_operator import children
from shm_operator.crd import SelfHealingModelSpec
from shm_operator.status import full_spec

from images_support import (BUILD_SCRIPT, REPO_ROOT, assert_hardened, build_images, container_name, detached,
                            http_get, http_post_json, logs, security_report, wait_for_http)

pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

CRD_FILE = REPO_ROOT / "crds" / "selfhealingmodels.yaml"
EXAMPLE_CR = REPO_ROOT / "examples" / "fraud" / "selfhealingmodel.yaml"
USER = children.RUN_AS_USER


@pytest.fixture(scope="module")
def images():
    return build_images()


def test_build_reports_both_images_and_their_sizes(images):
    for image in (images.operator, images.model_server):
        size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
        assert 200e6 < size < 4e9, (image, size)
        assert image in images.build_output
        user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
        assert user == f"{USER}:{USER}"
    assert "built with" in images.build_output


def test_images_hold_only_what_they_run(images):
    """The operator image has shm_operator + model_handler; the model server model_handler and
    TorchServe; both have s3fs (s3:// storage and archives) but not the optional gcsfs/adlfs;
    neither has the sandbox, bench, examples or fuzz targets (nor tests)."""
    probe = ("import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
             "['shm_operator', 'model_handler', 'kopf', 'ts', 'sandbox', 'bench', 'examples', 'fuzz', 'tests', "
             "'s3fs', 'gcsfs', 'adlfs']}))")
    found = {}
    for image in (images.operator, images.model_server):
        proc = podman("run", "--rm", "--network=none", "--entrypoint=python", image, "-c", probe)
        found[image] = json.loads(proc.stdout)
    assert found[images.operator] == {"shm_operator": True, "model_handler": True, "kopf": True, "ts": False,
                                      "sandbox": False, "bench": False, "examples": False, "fuzz": False,
                                      "tests": False, "s3fs": True, "gcsfs": False, "adlfs": False}
    assert found[images.model_server] == {"shm_operator": False, "model_handler": True, "kopf": False, "ts": True,
                                          "sandbox": False, "bench": False, "examples": False, "fuzz": False,
                                          "tests": False, "s3fs": True, "gcsfs": False, "adlfs": False}


# ---------------------------------------------------------------- operator image


def chart_operator_container() -> tuple[dict, dict]:
    """The operator Deployment's pod spec as the chart renders it (deploy/ is the chart rendered)."""
    docs = [d for d in yaml.safe_load_all((REPO_ROOT / "deploy" / "20-selfheal.yaml").read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_operator_image_runs_hardened_and_reconciles(images, tmp_path):
    pod, container = chart_operator_container()
    liveness, metrics = free_port(), free_port()
    with sandbox_server.SandboxProcess(tmp_path / "sandbox", node=False) as state:
        kubeconfig = tmp_path / "kubeconfig"
        shutil.copyfile(state["kubeconfig"], kubeconfig)
        kubeconfig.chmod(0o644)
        apply(state, CRD_FILE)
        apply(state, EXAMPLE_CR, namespace="default")
        # the chart's pod, with the sandbox's API and free ports on the host network
        args = [a.replace("--liveness=http://0.0.0.0:8080/", f"--liveness=http://127.0.0.1:{liveness}/")
                for a in container["args"]]
        assert any(a.startswith(f"--liveness=http://127.0.0.1:{liveness}/") for a in args), container["args"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env.update({"SELFHEAL_METRICS_PORT": str(metrics), "SELFHEAL_METRICS_ADDR": "127.0.0.1",
                    "KUBECONFIG": "/etc/selfheal/kubeconfig"})
        spec = {**pod, "containers": [{**container, "args": args, "env": [{"name": k, "value": v} for k, v in env.items()],
                                       "image": images.operator,
                                       "volumeMounts": [*container["volumeMounts"], {"name": "kubeconfig",
                                                                                     "mountPath": "/etc/selfheal"}]}],
                "volumes": [*pod["volumes"], {"name": "kubeconfig", "configMap": {"name": "kubeconfig"}}]}
        name = container_name("operator")
        translated = pod_container({"metadata": {"name": "selfheal", "namespace": "selfheal-system", "uid": name},
                                    "spec": spec}, name, tmp_path / "pod", "127.0.0.1",
                                   {"kubeconfig": {"data": {"kubeconfig": kubeconfig.read_text()}}},
                                   empty_dir_tmpfs=True)
        assert "--read-only" in translated.args and "--cap-drop=ALL" in translated.args
        with detached(name, translated.args):
            assert wait_for_http(f"http://127.0.0.1:{liveness}/healthz", name, timeout=120) is not None
            text = wait_for_http(f"http://127.0.0.1:{metrics}/metrics", name, timeout=30)
            assert "selfheal_reconcile_errors_total" in text or "selfheal_heals_started_total" in text, text[:2000]
            # the operator, read-only and unprivileged, reconciles: it creates the serving Deployment
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and get(state, "/apis/apps/v1/namespaces/default/deployments/fraud-serving") is None:
                time.sleep(1)
            deployment = get(state, "/apis/apps/v1/namespaces/default/deployments/fraud-serving")
            assert deployment is not None, f"no Deployment after 90 s; operator log:\n{logs(name)}"
            assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/selfheal/model-server:0.1.0"
            assert_hardened(security_report(name))
            assert "Traceback" not in logs(name), logs(name)


def apply(state: dict, path: Path, namespace: str | None = None) -> None:
    env = {**os.environ, "KUBECONFIG": state["kubeconfig"]}
    kubectl = shutil.which("kubectl", path=f"{REPO_ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
    assert kubectl, "kubectl not found (make install puts it into .venv/bin)"
    subprocess.run([kubectl, "apply", "-f", str(path), *(["-n", namespace] if namespace else [])],
                   env=env, check=True, capture_output=True, timeout=60)


def get(state: dict, path: str) -> dict | None:
    status, body = http_get(state["url"] + path)
    return json.loads(body) if status == 200 else None


# ---------------------------------------------------------------- model-server image


@pytest.fixture(scope="module")
def model(tmp_path_factory, images):
    """The example fraud model as a TorchServe model directory, and a storage directory, both
    shared with the containers at the same paths (the sandbox's stand-in for network storage)."""
    root = tmp_path_factory.mktemp("image-model")
    root.chmod(0o755)  # pytest makes it 0700; the containers' user must be able to enter it
    archive = build_served(root / "store", rows=8000, seed=5)
    storage = root / "storage"
    storage.mkdir()
    os.chown(storage, USER, USER)
    spec = full_spec({**yaml.safe_load(EXAMPLE_CR.read_text())["spec"], "replicas": 1,
                      "model": {"archive": str(archive), "image": images.model_server},
                      "storage": {"uri": storage.as_uri()}})
    return root, archive, storage, spec


def test_model_server_image_serves_predictions_describe_and_metrics(images, model, tmp_path):
    root, archive, storage, spec = model
    deployment = children.deployment("fraud", "default", spec, "base")
    pod = {"metadata": {"name": "fraud-serving-test", "namespace": "default", "uid": "model-server-test"},
           "spec": deployment["spec"]["template"]["spec"]}
    config_maps = {children.rules_name("fraud"): children.rules_configmap("fraud", spec)}
    pool = AddressPool(POD_NETWORK, "127.0.0.200")
    ip = pool.take(children.PORTS.values())
    name = container_name("model-server")
    try:
        translated = pod_container(pod, name, tmp_path / "pod", ip, config_maps, shared=[str(root)], empty_dir_tmpfs=True)
        with detached(name, translated.args):
            wait_for_http(f"http://{ip}:{children.PORTS['inference']}/ping", name, timeout=180)
            rows = sample(np.random.default_rng(1), 4).x.tolist()
            status, answer = http_post_json(f"http://{ip}:{children.PORTS['inference']}/predictions/fraud",
                                            {"instances": rows})
            assert status == 200, (answer, logs(name))
            assert len(answer["label"]) == 4 and set(answer["label"]) <= set(spec["classes"]), answer
            assert np.allclose(np.sum(answer["probabilities"], axis=1), 1.0, atol=1e-5), answer
            status, bad = http_post_json(f"http://{ip}:{children.PORTS['inference']}/predictions/fraud",
                                         {"instances": [[1.0, 2.0]]})
            assert 400 <= status < 500, bad
            status, body = http_get(f"http://{ip}:{children.PORTS['management']}/models/fraud?customized=true")
            assert status == 200, body
            described = json.loads(body)[0]["customizedMetadata"]
            described = json.loads(described) if isinstance(described, str) else described
            assert described["adapter"]["version"] == "base", described
            status, text = http_get(f"http://{ip}:{children.PORTS['metrics']}/metrics")
            assert status == 200 and "selfheal_" in text, text[:2000]
            assert_hardened(security_report(name))
    finally:
        pool.release(ip)


def test_heal_job_in_the_model_server_image_writes_candidate_and_termination_message(images, model, tmp_path):
    root, archive, storage, spec = model
    data = sample(np.random.default_rng(0), 3000, World(amount_unit=100.0, distance_unit=1000.0))
    TrafficStore(storage.as_uri(), "default", "fraud", writer_id="pod-a").write_shard(data.x, np.zeros((3000, 2)))
    for path in [storage, *storage.rglob("*")]:  # the pods' writes, as the pods' user
        os.chown(path, USER, USER)
    config = SelfHealingModelSpec.model_validate(spec).heal_job_config()
    job = children.heal_job("fraud", "default", spec, job_name="fraud-heal-1", parent="base", version="v1", config=config)
    job["metadata"]["uid"] = "heal-job-uid"   # as the API server stores it: its config map is owned by it
    config_map = children.heal_config_map(job, config)   # the Job reads its config from this mounted file
    pod = {"metadata": {"name": "fraud-heal-1-test", "namespace": "default", "uid": "heal-test"},
           "spec": job["spec"]["template"]["spec"]}
    name = container_name("heal")
    translated = pod_container(pod, name, tmp_path / "pod", "127.0.0.1", {config_map["metadata"]["name"]: config_map},
                               shared=[str(root)], empty_dir_tmpfs=True)
    proc = podman("run", *translated.args, check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(translated.termination_log.read_text())
    assert result["state"] == "candidate" and result["promotable"] and result["labelsUsed"] == 0, result
    _, meta = AdapterRegistry(storage.as_uri(), "default", "fraud").get("v1")
    assert meta.state == "candidate" and meta.creator == "fraud-heal-1" and meta.sha256 == result["sha256"]


# ---------------------------------------------------------------- a package missing from the context


@pytest.mark.parametrize(("dockerfile", "drop"), [("operator.Dockerfile", "model_handler")])
def test_a_package_missing_from_the_build_context_fails_the_build(images, tmp_path, dockerfile, drop):
    """The operator's Dockerfile without `COPY model_handler`: the build stops at `pip install`
    (setup.py names the missing package) instead of producing an image that fails at import."""
    source = REPO_ROOT / "docker" / dockerfile
    broken = tmp_path / dockerfile
    lines = source.read_text().splitlines()
    assert f"COPY {drop} {drop}" in lines
    broken.write_text("\n".join(line for line in lines if line != f"COPY {drop} {drop}") + "\n")
    shutil.copyfile(f"{source}.dockerignore", f"{broken}.dockerignore")
    image = f"localhost/selfheal/broken-{drop.replace('_', '-')}:test"
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), "build-one", str(broken), image], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    podman("rmi", "--force", image, check=False)
    assert proc.returncode != 0, output[-3000:]
    assert f"package source not in the build context: {drop} (directory {drop}/)" in output, output[-3000:]


# ---------------------------------------------------------------- the demo with pods in containers


def test_container_demo_heals_rolls_back_and_forward_with_no_failed_request(images, tmp_path):
    """`make demo-containers`: the sandbox runs the serving pods and the heal Job as podman containers
    of the model-server image, with the operator's securityContext; the whole loop (drift, heal Job,
    rollout, kubectl rollback and roll-forward) completes without a failed request."""
    from sandbox.containers import LABEL, sandbox_label

    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    result = subprocess.run([sys.executable, "-m", "examples.demo", "--runtime", "podman", "--out", str(out),
                             "--workdir", str(work), "--no-live"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((out / "demo.json").read_text())
    assert summary["healed_accuracy"] >= 0.9 and summary["drifted_accuracy"] < 0.5, summary
    assert summary["failed_requests"] == 0 and summary["rollback_ok"] is True and summary["labels_used"] == 0, summary
    assert "adapter history: v1 (by operator) -> base (by user) -> v1 (by user)" in result.stdout
    # every pod ran as a container: its termination-log file was opened to the container's user and
    # its emptyDir volumes (kept for pods still there at the end) were given to uid 10001 (the
    # process runtime leaves both to root, 0644); and no container is left behind
    pods = work / "sandbox" / "pods" / "demo"
    heal_pods = [p for p in pods.iterdir() if p.name.startswith("fraud-heal-")]
    serving_pods = [p for p in pods.iterdir() if p.name.startswith("fraud-serving-")]
    assert heal_pods and len(serving_pods) >= 4, sorted(p.name for p in pods.iterdir())
    for pod in heal_pods + serving_pods:
        assert (pod / "termination-log").stat().st_mode & 0o777 == 0o666, pod
    kept = [pod for pod in heal_pods + serving_pods if (pod / "volumes" / "tmp").exists()]
    assert heal_pods[0] in kept and len(kept) >= 2, kept
    assert all((pod / "volumes" / "tmp").stat().st_uid == USER for pod in kept), kept
    assert json.loads((heal_pods[0] / "termination-log").read_text())["state"] == "candidate"
    left = podman("ps", "--all", "--filter", f"label={LABEL}={sandbox_label(work / 'sandbox')}",
                  "--format", "{{.Names}}").stdout.split()
    assert left == []
