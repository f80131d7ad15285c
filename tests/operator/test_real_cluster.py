"""The same heal scenario on a real cluster (e.g. kind in a user's CI). Skipped unless configured:

    KUBECONFIG=...                        a cluster you may create namespaces in
    SELFHEAL_E2E_OPERATOR_IMAGE=...       built from docker/operator.Dockerfile and loaded into the cluster
    SELFHEAL_E2E_MODEL_IMAGE=...          built from docker/model-server.Dockerfile, with the fraud model
                                          directory at SELFHEAL_E2E_ARCHIVE (default /models/fraud)
    SELFHEAL_E2E_STORAGE_URI=...          storage both can reach (e.g. s3://bucket/prefix, or file:// on a
                                          shared volume)

The chart installs the operator; traffic goes through `kubectl port-forward` to the Service.
Nothing here can run on the machines this project is developed on (no cluster); it is kept
runnable for users, and it asserts the same outcomes as the sandbox test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid

import pytest
import yaml

from examples.fraud.generator import World, labelled_rows
from sandbox.env import free_port
from sandbox.loadgen import LoadLoop
from sandbox_helpers import REPO_ROOT, wait_until

REQUIRED = ["KUBECONFIG", "SELFHEAL_E2E_OPERATOR_IMAGE", "SELFHEAL_E2E_MODEL_IMAGE", "SELFHEAL_E2E_STORAGE_URI"]
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200),
              pytest.mark.skipif(not all(os.environ.get(k) for k in REQUIRED) or not shutil.which("helm"),
                                 reason=f"needs a real cluster: set {', '.join(REQUIRED)} and put helm on PATH")]


def run(*args: str, input: str | None = None) -> str:
    return subprocess.run(args, input=input, capture_output=True, text=True, check=True, timeout=300).stdout


def status(namespace: str) -> dict:
    return json.loads(run("kubectl", "get", "shm", "fraud", "-n", namespace, "-o", "json")).get("status") or {}


def test_heal_on_a_real_cluster():
    namespace = f"selfheal-e2e-{uuid.uuid4().hex[:6]}"
    repository, _, tag = os.environ["SELFHEAL_E2E_OPERATOR_IMAGE"].rpartition(":")
    run("kubectl", "create", "namespace", namespace)
    forward = None
    try:
        run("helm", "install", "selfheal", str(REPO_ROOT / "charts" / "selfheal"), "-n", namespace,
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "watch.mode=namespaced", "--set", f"watch.namespaces={{{namespace}}}", "--wait")
        body = yaml.safe_load((REPO_ROOT / "examples" / "fraud" / "selfhealingmodel.yaml").read_text())
        body["spec"]["model"] = {"archive": os.environ.get("SELFHEAL_E2E_ARCHIVE", "/models/fraud"),
                                 "image": os.environ["SELFHEAL_E2E_MODEL_IMAGE"]}
        body["spec"]["storage"] = {"uri": os.environ["SELFHEAL_E2E_STORAGE_URI"]}
        body["spec"].update(serving={"workers": 1, "sampleFraction": 1.0},
                            drift={"windowRows": 300, "checkIntervalSeconds": 5},
                            healing={"cooldownSeconds": 120, "trainingWindowRows": 1500, "minRows": 300})
        run("kubectl", "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
        # Ready: both pods serve spec.adapter.version (image pulls included)
        subprocess.run(["kubectl", "wait", "--for=condition=Ready", "shm/fraud", "-n", namespace, "--timeout=600s"],
                       check=True, timeout=620)
        wait_until(lambda: (status(namespace).get("adapter") or {}).get("ready") == "2/2", timeout=600,
                   interval=5, what="2 ready model-server pods")
        port = free_port()
        forward = subprocess.Popen(["kubectl", "port-forward", "-n", namespace, "svc/fraud-serving",
                                    f"{port}:8080"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        drifted = labelled_rows(World(amount_unit=100.0, distance_unit=1000.0), 0)
        loop = LoadLoop(f"http://127.0.0.1:{port}/predictions/fraud", drifted, clients=2, max_seconds=900).start()
        try:
            healed = wait_until(lambda: (s := status(namespace)).get("lastHeal", {}).get("result")
                                not in (None, "Running") and s, timeout=600, interval=5, what="a finished heal")
            assert healed["lastHeal"]["result"] == "Promoted", healed["lastHeal"]
            version = healed["lastHeal"]["version"]
            wait_until(lambda: (status(namespace).get("adapter") or {}).get("current") == version, timeout=600,
                       interval=5, what=f"pods on {version}")
            time.sleep(15)
            assert loop.summary(loop.window(10))["accuracy"] > 0.9
        finally:
            loop.stop()
        assert loop.summary()["failed"] == 0
    finally:
        if forward is not None:
            forward.terminate()
        subprocess.run(["helm", "uninstall", "selfheal", "-n", namespace], capture_output=True)
        subprocess.run(["kubectl", "delete", "namespace", namespace, "--wait=false"], capture_output=True)
