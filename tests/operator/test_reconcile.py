"""The real operator process against the sandbox API, driven with the real kubectl: children with
owner references, status and conditions, refused bad specs and unknown versions, a manual
rollback/forward with `kubectl patch`, and garbage collection on delete."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from examples.fraud.generator import CLASSES, FEATURES
from model_handler.model import adapter_to_bytes, load_model, model_hash
from model_handler.registry import AdapterRegistry
from model_handler.rules import RuleSet
from sandbox_helpers import REPO_ROOT, wait_until

pytestmark = pytest.mark.timeout(300)
EXAMPLE = REPO_ROOT / "examples" / "fraud" / "selfhealingmodel.yaml"


def example_cr(model_dir, storage, **spec_overrides) -> str:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["spec"]["model"]["archive"] = str(model_dir)
    body["spec"]["storage"] = {"uri": storage.as_uri()}
    body["spec"].update(spec_overrides)
    return yaml.safe_dump(body)


def status_of(sandbox, namespace, name="fraud") -> dict:
    return sandbox.get("shm", name, "-n", namespace).get("status") or {}


def condition(status, type_) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def events(sandbox, namespace) -> list[dict]:
    return sandbox.get("events", "-n", namespace).get("items", [])


def put_adapter(model_dir, storage, namespace, version, bias):
    model = load_model(model_dir)
    state = model.adapter_state()
    state["logit_bias"] = torch.tensor(bias)
    rules = RuleSet.from_yaml(model_dir / "rules.yaml", FEATURES, CLASSES)
    AdapterRegistry(storage.as_uri(), namespace, "fraud").put(
        version, adapter_to_bytes(state), {"base_model_hash": model_hash(model_dir), "rules_hash": rules.hash()})


def template_version(sandbox, namespace) -> str:
    deployment = sandbox.get("deployment", "fraud-serving", "-n", namespace)
    return deployment["spec"]["template"]["metadata"]["annotations"]["selfheal.io/adapter-version"]


def test_children_status_versions_and_bad_specs(sandbox, namespace, operator, model_dir, tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=example_cr(model_dir, storage))
    try:
        wait_until(lambda: condition(status_of(sandbox, namespace), "ChildrenApplied").get("status") == "True",
                   timeout=60, what="ChildrenApplied=True")
    except AssertionError:
        raise AssertionError(operator.tail())
    uid = sandbox.get("shm", "fraud", "-n", namespace)["metadata"]["uid"]
    for kind, name in [("deployment", "fraud-serving"), ("service", "fraud-serving"),
                       ("configmap", "fraud-rules"), ("configmap", "fraud-adapter")]:
        owners = sandbox.get(kind, name, "-n", namespace)["metadata"]["ownerReferences"]
        assert [o["uid"] for o in owners] == [uid], (kind, owners)
    deployment = sandbox.get("deployment", "fraud-serving", "-n", namespace)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert template_version(sandbox, namespace) == "base"
    status = status_of(sandbox, namespace)
    assert status["adapter"]["desired"] == "base" and status["observedGeneration"] == 1
    rules = yaml.safe_load(sandbox.get("configmap", "fraud-rules", "-n", namespace)["data"]["rules.yaml"])
    assert [r["name"] for r in rules["rules"]][:2] == ["big_new_merchant", "far_and_fast"]

    # A version the registry does not have is refused; the pods keep what they serve.
    sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--type", "merge",
                    "-p", json.dumps({"spec": {"adapter": {"version": "v7"}}}))
    wait_until(lambda: condition(status_of(sandbox, namespace), "Degraded").get("reason") == "AdapterNotFound",
               timeout=30, what="Degraded=AdapterNotFound")
    assert template_version(sandbox, namespace) == "base"
    assert any(e.get("reason") == "AdapterNotFound" for e in events(sandbox, namespace))

    # A registered version rolls out; the history says a person did it.
    put_adapter(model_dir, storage, namespace, "v1", [0.5, -0.5])
    sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--type", "merge",
                    "-p", json.dumps({"spec": {"adapter": {"version": "v1"}}}))
    wait_until(lambda: template_version(sandbox, namespace) == "v1", timeout=30, what="template at v1")
    status = wait_until(lambda: (s := status_of(sandbox, namespace)).get("rollout") and s, timeout=30,
                        what="status.rollout")
    assert status["rollout"]["to"] == "v1" and status["rollout"]["from"] == "base"
    assert status["history"][-1]["by"] == "user" and status["history"][-1]["version"] == "v1"
    assert condition(status, "Degraded").get("status") == "False"
    assert AdapterRegistry(storage.as_uri(), namespace, "fraud").meta("v1").state == "promoted"

    # A rule that does not parse: reported with the rule named, nothing else changes.
    bad = json.dumps([{"op": "replace", "path": "/spec/rules/0/when", "value": "amount >"}])
    sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--type", "json", "-p", bad)
    status = wait_until(lambda: (s := status_of(sandbox, namespace)).get("phase") == "Failed" and s,
                        timeout=30, what="phase Failed")
    ready = condition(status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.rules[0]" in ready["message"] and "big_new_merchant" in ready["message"]
    assert template_version(sandbox, namespace) == "v1"

    # Deleting the resource deletes its children (owner references, no finalizer needed).
    sandbox.kubectl("delete", "shm", "fraud", "-n", namespace, "--timeout=30s")
    wait_until(lambda: sandbox.kubectl("get", "deployment", "fraud-serving", "-n", namespace,
                                       check=False).returncode != 0, timeout=30, what="Deployment deleted")


def test_which_rollouts_are_watched_for_harm():
    from shm_operator.crd import SelfHealingModelStatus
    from shm_operator.rollout import watched
    status = SelfHealingModelStatus.model_validate({"adapter": {"lastGood": "v2"}})
    assert watched("operator", "v3", status) and watched("user", "v9", status)
    assert not watched("rollback", "v2", status)        # an automatic rollback is never rolled back
    assert not watched("user", "base", status)          # a person's retreat to base is honoured
    assert not watched("user", "v2", status)            # ... and to the last good version
