"""Honest readiness and the pod template with the real operator process, the sandbox's process
kubelet and the real kubectl: pods whose image cannot be pulled keep `Ready` False with their
waiting reason (condition, Event, phase Unavailable) and `kubectl wait --for=condition=Ready`
blocking; once the image is fixed it returns as soon as the pod serves. Also status.url and its
column, the owned PodDisruptionBudget (created, then deleted when the spec drops it), the pod
template on the Deployment, `kubectl scale` through the scale subresource, and a finished heal
Job's TTL set by the operator once its result is stored (the Job then goes, and nothing misses it)."""
from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

from sandbox_helpers import wait_until
from test_reconcile import condition, events, example_cr, status_of

pytestmark = pytest.mark.timeout(480)
BAD_IMAGE = "registry.invalid/selfheal/model-server:0.1.0"
POD_TEMPLATE = {"serviceAccountName": "fraud-model", "imagePullSecrets": [{"name": "regcred"}],
                "nodeSelector": {"pool": "inference"}, "priorityClassName": "high",
                "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
                "labels": {"team": "risk", "selfheal.io/model": "other"}, "annotations": {"owner": "risk-team"}}


def cr(model_dir, storage) -> str:
    body = yaml.safe_load(example_cr(model_dir, storage, podTemplate=POD_TEMPLATE,
                                     serving={"workers": 1, "disruptionBudget": {"minAvailable": 1}},
                                     healing={"ttlSecondsAfterFinished": 2}))
    body["spec"]["model"]["image"] = BAD_IMAGE
    body["spec"].pop("resources", None)
    return yaml.safe_dump(body)


def heal_job(namespace: str) -> str:
    """A finished heal Job of this model, as the operator would have made it."""
    return yaml.safe_dump({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "fraud-heal-1", "namespace": namespace,
                     "labels": {"selfheal.io/model": "fraud", "selfheal.io/component": "heal"}},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "heal", "image": "selfheal/heal", "command": ["python", "-c", "print('healed')"]}]}}}})


def test_readiness_gates_on_serving_pods(sandbox, namespace, operator, model_dir, tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=cr(model_dir, storage))
    status = lambda: status_of(sandbox, namespace)  # noqa: E731
    try:
        ready = wait_until(lambda: (c := condition(status(), "Ready")).get("reason") in (
            "ImagePullBackOff", "ErrImagePull", "PodsFailing") and c, timeout=60, what="Ready=False, image pull")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{operator.tail()}") from None
    assert ready["status"] == "False" and BAD_IMAGE in ready["message"], ready
    wait_until(lambda: status().get("phase") == "Unavailable", timeout=20, what="phase Unavailable")
    assert status()["readyReplicas"] == 0 and status()["replicas"] == 2
    assert condition(status(), "ChildrenApplied")["status"] == "True"
    assert any(e["reason"] in ("ImagePullBackOff", "ErrImagePull", "PodsFailing") and e["type"] == "Warning"
               and BAD_IMAGE in e["message"] for e in events(sandbox, namespace))
    waited = sandbox.kubectl("wait", "--for=condition=Ready", "shm/fraud", "-n", namespace, "--timeout=6s",
                             check=False, timeout=30)
    assert waited.returncode != 0 and "timed out" in waited.stderr, waited

    url = f"http://fraud-serving.{namespace}.svc.cluster.local:8080/predictions/fraud"
    assert status()["url"] == url
    table = sandbox.kubectl("get", "shm", "fraud", "-n", namespace).stdout
    assert "URL" in table.splitlines()[0] and url in table and "Unavailable" in table

    uid = sandbox.get("shm", "fraud", "-n", namespace)["metadata"]["uid"]
    pdb = sandbox.get("poddisruptionbudget", "fraud-serving", "-n", namespace)
    assert [o["uid"] for o in pdb["metadata"]["ownerReferences"]] == [uid]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == {"selfheal.io/model": "fraud", "selfheal.io/component": "serving"}
    template = sandbox.get("deployment", "fraud-serving", "-n", namespace)["spec"]["template"]
    for key in ("serviceAccountName", "imagePullSecrets", "nodeSelector", "priorityClassName", "tolerations"):
        assert template["spec"][key] == POD_TEMPLATE[key], key
    assert template["metadata"]["labels"]["team"] == "risk"
    assert template["metadata"]["labels"]["selfheal.io/model"] == "fraud"      # the operator's label won
    assert template["metadata"]["annotations"]["owner"] == "risk-team"

    # A finished heal whose result is stored: the operator gives its Job the TTL, the Job goes.
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=heal_job(namespace))
    sandbox.kubectl("wait", "--for=condition=complete", "job/fraud-heal-1", "-n", namespace, "--timeout=30s")
    sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--subresource=status", "--type", "merge", "-p",
                    json.dumps({"status": {"lastHeal": {"job": "fraud-heal-1", "version": "v1", "parent": "base",
                                                        "result": "NothingToFix", "reason": "nothing drifted"}}}))
    wait_until(lambda: sandbox.kubectl("get", "job", "fraud-heal-1", "-n", namespace, check=False).returncode != 0,
               timeout=30, what="the heal Job deleted after its TTL")
    assert any(c["path"].endswith("/jobs/fraud-heal-1") and c["verb"] == "patch" for c in operator.calls())

    # kubectl scale goes through the scale subresource onto spec.replicas; the Deployment follows.
    sandbox.kubectl("scale", "shm/fraud", "-n", namespace, "--replicas=1")
    assert sandbox.get("shm", "fraud", "-n", namespace)["spec"]["replicas"] == 1
    wait_until(lambda: sandbox.get("deployment", "fraud-serving", "-n", namespace)["spec"]["replicas"] == 1,
               timeout=30, what="the Deployment scaled to 1")
    wait_until(lambda: status().get("replicas") == 1, timeout=30, what="status.replicas 1")
    scale = json.loads(sandbox.kubectl("get", "--raw", f"/apis/selfheal.io/v1alpha1/namespaces/{namespace}/"
                                       "selfhealingmodels/fraud/scale").stdout)
    assert scale["spec"]["replicas"] == 1 and scale["status"] == {
        "replicas": 1, "selector": "selfheal.io/model=fraud,selfheal.io/component=serving"}

    # Fix the image and drop the budget: kubectl wait blocks until the pod serves, then returns.
    waiter = subprocess.Popen([sandbox.kubectl_bin, "wait", "--for=condition=Ready", "shm/fraud", "-n", namespace,
                               "--timeout=300s"], env=sandbox.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--type", "json", "-p", json.dumps(
            [{"op": "replace", "path": "/spec/podTemplate", "value": {"nodeSelector": {"pool": "b"}}}]))
        sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--type", "merge", "-p", json.dumps(
            {"spec": {"model": {"image": "ghcr.io/selfheal/model-server:0.1.0"}, "serving": {"disruptionBudget": None}}}))
        wait_until(lambda: sandbox.kubectl("get", "pdb", "fraud-serving", "-n", namespace, check=False).returncode,
                   timeout=30, what="the PodDisruptionBudget deleted")
        # fields dropped from spec.podTemplate leave the pod template (the patch nulls them)
        template = sandbox.get("deployment", "fraud-serving", "-n", namespace)["spec"]["template"]["spec"]
        assert template["nodeSelector"] == {"pool": "b"} and not {
            "serviceAccountName", "imagePullSecrets", "tolerations", "priorityClassName"} & template.keys(), template
        time.sleep(3)
        assert waiter.poll() is None, "kubectl wait returned before any pod served"
        assert waiter.wait(timeout=300) == 0, waiter.stderr.read()
    finally:
        if waiter.poll() is None:
            waiter.kill()
    final = status()
    assert condition(final, "Ready")["status"] == "True" and condition(final, "Ready")["reason"] == "PodsReady"
    assert final["readyReplicas"] == 1 and final["adapter"]["ready"] == "1/1"
    wait_until(lambda: status().get("phase") == "Serving", timeout=20, what="phase Serving")
    ready_pods = [p for p in sandbox.get("pods", "-n", namespace, "-l", "selfheal.io/component=serving")["items"]
                  if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
    assert len(ready_pods) == 1
    assert any(e["reason"] == "PodsReady" for e in events(sandbox, namespace))


def test_crash_looping_pods_are_named_in_ready_an_event_and_the_phase(sandbox, namespace, operator, tmp_path):
    """A model archive that is not there: the model server exits at once, the kubelet restarts it
    with a back-off, and the operator says so instead of calling the model ready."""
    storage = tmp_path / "storage"
    storage.mkdir()
    body = yaml.safe_load(example_cr(tmp_path / "no-such-model", storage, replicas=1))
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    try:
        ready = wait_until(lambda: (c := condition(status_of(sandbox, namespace), "Ready")).get(
            "reason") == "CrashLoopBackOff" and c, timeout=90, what="Ready=False, CrashLoopBackOff")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{operator.tail()}") from None
    assert ready["status"] == "False" and "last exit code 1" in ready["message"], ready
    wait_until(lambda: status_of(sandbox, namespace).get("phase") == "Unavailable", timeout=20,
               what="phase Unavailable")
    warnings = [e for e in events(sandbox, namespace) if e["reason"] == "CrashLoopBackOff"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning", warnings
    waited = sandbox.kubectl("wait", "--for=condition=Ready", "shm/fraud", "-n", namespace, "--timeout=5s",
                             check=False, timeout=30)
    assert waited.returncode != 0 and "timed out" in waited.stderr, waited
