"""spec.podTemplate on the serving pods and the heal Job's pods, the optional PodDisruptionBudget,
the heal Job's TTL and status.url: the operator's pure renderers, with the spec as the CRD models
default it (so what is checked is what the operator applies)."""
from __future__ import annotations

import pytest

from shm_operator import children
from shm_operator.decisions import validate_spec_semantics
from shm_operator.status import full_spec

BASE = {"model": {"archive": "/models/fraud"}, "features": ["a", "b"], "classes": ["x", "y"]}
TEMPLATE = {
    "serviceAccountName": "fraud-model",
    "imagePullSecrets": [{"name": "regcred"}],
    "nodeSelector": {"pool": "inference"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                            "labelSelector": {"matchLabels": {"selfheal.io/model": "fraud"}}}}]}},
    "priorityClassName": "high",
    # a user label that collides with the operator's selector label must lose
    "labels": {"team": "risk", "selfheal.io/component": "hijacked"},
    "annotations": {"prometheus.io/scrape": "true", "selfheal.io/adapter-version": "forged"},
}


def pod_templates(spec: dict) -> list[dict]:
    deployment = children.deployment("fraud", "ns", spec, "v1")
    job = children.heal_job("fraud", "ns", spec, job_name="fraud-heal-1", parent="base", version="v1", config={})
    return [deployment["spec"]["template"], job["spec"]["template"]]


def test_pod_template_reaches_serving_pods_and_heal_jobs_and_the_operator_labels_win():
    spec = full_spec({**BASE, "podTemplate": TEMPLATE})
    deployment = children.deployment("fraud", "ns", spec, "v1")
    for template in pod_templates(spec):
        pod = template["spec"]
        assert pod["serviceAccountName"] == "fraud-model" and pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["nodeSelector"] == {"pool": "inference"} and pod["priorityClassName"] == "high"
        assert pod["tolerations"] == TEMPLATE["tolerations"]          # no null keys added
        assert pod["affinity"] == TEMPLATE["affinity"]
        assert pod["automountServiceAccountToken"] is False           # the hardening stays
        assert pod["securityContext"]["runAsNonRoot"] is True
        labels = template["metadata"]["labels"]
        assert labels["team"] == "risk" and labels["selfheal.io/model"] == "fraud"
        assert labels["selfheal.io/component"] in ("serving", "heal")
        assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    serving = deployment["spec"]["template"]["metadata"]
    assert serving["annotations"]["selfheal.io/adapter-version"] == "v1"
    # the Deployment's selector still selects its own pods
    assert deployment["spec"]["selector"]["matchLabels"].items() <= serving["labels"].items()


def test_without_a_pod_template_nothing_changes():
    """Empty fields are not written: a model without a pod template keeps its pod template hash
    (upgrading the operator does not roll its pods)."""
    for template in pod_templates(full_spec(BASE)):
        assert not set(children.POD_TEMPLATE_FIELDS) & template["spec"].keys()
        assert "team" not in template["metadata"]["labels"]


@pytest.mark.parametrize("budget, expected", [
    ({"minAvailable": 1}, {"minAvailable": 1, "maxUnavailable": None}),
    ({"maxUnavailable": "50%"}, {"minAvailable": None, "maxUnavailable": "50%"}),
])
def test_disruption_budget(budget, expected):
    spec = full_spec({**BASE, "serving": {"disruptionBudget": budget}})
    pdb = children.disruption_budget("fraud", spec)
    assert pdb["apiVersion"] == "policy/v1" and pdb["metadata"]["name"] == "fraud-serving"
    assert pdb["spec"]["selector"]["matchLabels"] == children.deployment(
        "fraud", "ns", spec, "v1")["spec"]["selector"]["matchLabels"]
    assert {k: pdb["spec"][k] for k in expected} == expected   # a count is an integer, as the API wants
    assert children.disruption_budget("fraud", full_spec(BASE)) is None


@pytest.mark.parametrize("budget, problem", [
    ({}, "exactly one"), ({"minAvailable": 1, "maxUnavailable": 1}, "exactly one"),
    ({"minAvailable": "half"}, "percentage"), ({"maxUnavailable": "150%"}, "percentage"),
])
def test_bad_disruption_budgets_are_reported(budget, problem):
    problems = validate_spec_semantics({**BASE, "serving": {"disruptionBudget": budget}})
    assert any("spec.serving.disruptionBudget" in p and problem in p for p in problems), problems


def test_heal_job_ttl_default_and_url():
    spec = full_spec(BASE)
    assert spec["healing"]["ttlSecondsAfterFinished"] == 86_400
    # the Job is created without a TTL: the operator sets it once the result is stored
    job = children.heal_job("fraud", "ns", spec, job_name="fraud-heal-1", parent="base", version="v1", config={})
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert children.inference_url("fraud", "models", spec) == \
        "http://fraud-serving.models.svc.cluster.local:8080/predictions/fraud"
    named = full_spec({**BASE, "model": {"archive": "/m", "name": "fraud-v2"}})
    assert children.inference_url("fraud", "models", named).endswith("/predictions/fraud-v2")
    assert children.selector_string("fraud") == "selfheal.io/model=fraud,selfheal.io/component=serving"


def test_fields_dropped_from_the_pod_template_leave_the_deployment():
    """The Deployment is patched (strategic merge) when it exists: the patch carries nulls for the
    pod template fields the spec no longer sets, so they are removed, not kept from before."""
    from sandbox.patches import strategic_merge_patch
    before = children.deployment("fraud", "ns", full_spec({**BASE, "podTemplate": TEMPLATE}), "v1")
    after = children.deployment("fraud", "ns", full_spec({**BASE, "podTemplate": {"nodeSelector": {"pool": "b"}}}), "v1")
    merged = strategic_merge_patch(before, children.clearing_pod_template(after))["spec"]["template"]["spec"]
    assert merged["nodeSelector"] == {"pool": "b"}
    assert not {"serviceAccountName", "imagePullSecrets", "tolerations", "affinity", "priorityClassName"} & merged.keys()
    assert merged["containers"] == after["spec"]["template"]["spec"]["containers"]
