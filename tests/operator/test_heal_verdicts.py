"""Ending a heal by its Job's verdict (`healing.follow_heal`): promote follows the mode, approve
always waits for a person (with the reason and the command), reject and nothing end it. Real
`follow_heal` passes, a real file:// registry holding the candidate, the Job and its pod as dicts
in place of the API server, Events recorded instead of posted."""
from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json

import kopf
import pytest
import torch

from model_handler.model import ModelSpec, SelfHealingNet, adapter_to_bytes
from model_handler.registry import AdapterRegistry
from shm_operator import k8s
from shm_operator.context import ModelPass
from shm_operator.healing import follow_heal
from shm_operator.status import iso, written_status

T = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
ESTIMATE = {"estimator": "rule-agreement", "before": 0.412, "after": 0.93, "note": ""}


class Cluster:
    """The finished heal Job `m-heal-1` and its pod, whose termination message is the result."""

    def __init__(self, monkeypatch):
        self.message, self.events = "", []

        async def read(kind, namespace, name):
            assert (kind, name) == ("Job", "m-heal-1")
            return {"metadata": {"name": name}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}

        async def list_pods(namespace, selector):
            assert selector == {"job-name": "m-heal-1"}
            return [{"status": {"containerStatuses": [{"state": {"terminated": {"message": self.message}}}]}}]

        monkeypatch.setattr(k8s, "read", read)
        monkeypatch.setattr(k8s, "list_pods", list_pods)
        for poster in ("info", "warn"):
            monkeypatch.setattr(kopf, poster, lambda body, *, reason, message, **_: self.events.append(
                (reason, message)))


@pytest.fixture
def cluster(monkeypatch) -> Cluster:
    return Cluster(monkeypatch)


def candidate(spec: dict, version: str = "v1") -> str:
    """Commit `version` as the Job would; returns the sha256 it reports."""
    model = SelfHealingNet(ModelSpec(features=["a", "b"], classes=["x", "y"], hidden=[4], adapter_rank=2))
    tensors = model.adapter_state()
    tensors["logit_bias"] = torch.tensor([-0.5, 0.5])
    registry = AdapterRegistry(spec["storage"]["uri"], "ns", "m")
    return registry.put(version, adapter_to_bytes(tensors), {"base_model_hash": "b" * 64, "rules_hash": "r"}).sha256


def healing() -> dict:
    return {"adapter": {"desired": "base", "lastGood": "base", "current": "base"},
            "lastHeal": {"job": "m-heal-1", "version": "v1", "parent": "base", "started": iso(T), "result": "Running",
                         "reason": "drift declared", "steps": [], "failedChecks": []}}


def finish(spec: dict, cluster: Cluster, message: dict, mode: str = "Auto") -> tuple[dict, kopf.Patch]:
    cluster.message = json.dumps(message)
    spec = {**spec, "healing": {**spec["healing"], "mode": mode}}
    patch, status = kopf.Patch(), healing()
    asyncio.run(follow_heal(ModelPass.of("m", "ns", spec, copy.deepcopy(status), body={}, patch=patch, t=T)))
    return written_status(patch, {"status": status}), patch


def result(sha: str | None, **fields) -> dict:
    return {"version": "v1", "parent": "base", "state": "candidate", "promotable": True, "steps": ["prior"],
            "failed": [], "rows": 3000, "sha256": sha, "reason": "prior correction", **fields}


@pytest.mark.parametrize("mode", ["Auto", "Manual"])
def test_approve_waits_for_a_person_even_in_auto_and_says_why_and_how(spec, cluster, mode):
    sha = candidate(spec)
    message = result(sha, verdict="approve", promotable=False, evidence=[],
                     reason="the prior moved, but no trusted rule fires on the classes it moved", estimate=ESTIMATE)
    status, patch = finish(spec, cluster, message, mode)
    assert status["lastHeal"]["result"] == "AwaitingApproval" and "adapter" not in patch.get("spec", {})
    assert status["candidate"]["version"] == "v1"
    assert "no independent evidence" in status["candidate"]["reason"]
    (reason, text), = cluster.events
    assert reason == "NeedsApproval" and message["reason"] in text
    assert "kubectl patch shm m -n ns --type merge" in text and '"version":"v1"' in text
    assert status["lastHeal"]["verdict"] == "approve" and status["lastHeal"]["evidence"] == []
    assert status["lastHeal"]["estimate"] == ESTIMATE


def test_promote_in_auto_promotes_and_records_the_evidence(spec, cluster):
    sha = candidate(spec)
    status, patch = finish(spec, cluster, result(sha, verdict="promote", evidence=["held-out conflict 0.3 -> 0.01"],
                                                 estimate=ESTIMATE))
    assert status["lastHeal"]["result"] == "Promoted" and patch["spec"]["adapter"]["version"] == "v1"
    assert status["lastHeal"]["evidence"] == ["held-out conflict 0.3 -> 0.01"]
    assert [r for r, _ in cluster.events] == ["Promoting"]


def test_reject_and_nothing_end_the_heal(spec, cluster):
    status, _ = finish(spec, cluster, result(None, verdict="reject", state="rejected", promotable=False,
                                             reason="class rates implausible"))
    assert status["lastHeal"]["result"] == "Rejected" and "candidate" not in status
    status, _ = finish(spec, cluster, result(None, verdict="nothing", state="none", promotable=False,
                                             reason="input shift on a feature no rule or class depends on"))
    assert status["lastHeal"]["result"] == "NothingToFix"
    assert [r for r, _ in cluster.events] == ["CandidateRejected", "NothingToFix"]
    healing_condition = next(c for c in status["conditions"] if c["type"] == "Healing")
    assert healing_condition["reason"] == "NothingToFix" and healing_condition["status"] == "False"


def test_an_older_jobs_message_still_promotes(spec, cluster):
    sha = candidate(spec)
    status, patch = finish(spec, cluster, result(sha))     # no verdict, evidence or estimate
    assert status["lastHeal"]["result"] == "Promoted" and patch["spec"]["adapter"]["version"] == "v1"
    assert status["lastHeal"]["verdict"] == "promote" and "estimate" not in status["lastHeal"]


def estimated_accuracy() -> float | None:
    from prometheus_client import REGISTRY
    return REGISTRY.get_sample_value("selfheal_estimated_accuracy", {"namespace": "ns", "model": "m"})


def test_performance_is_the_candidates_estimate_after_a_promotion_else_the_served_models(spec, cluster):
    sha = candidate(spec)
    status, _ = finish(spec, cluster, result(sha, verdict="promote", estimate=ESTIMATE))
    assert status["performance"] == {"estimator": "rule-agreement", "accuracy": 0.93, "display": "0.93",
                                     "basis": "candidate v1 after heal m-heal-1", "updated": iso(T)}
    assert estimated_accuracy() == 0.93
    status, _ = finish(spec, cluster, result(sha, verdict="approve", estimate=ESTIMATE))
    assert status["performance"]["accuracy"] == 0.412 and status["performance"]["display"] == "0.41"
    assert status["performance"]["basis"] == "served before heal m-heal-1"
    unknown = {**ESTIMATE, "before": None, "note": "too few rule firings"}
    status, _ = finish(spec, cluster, result(None, verdict="nothing", state="none", estimate=unknown))
    assert status["performance"]["display"] == "unknown" and "accuracy" not in status["performance"]
    assert estimated_accuracy() is None     # unknown: no stale number in Prometheus either
    status, _ = finish(spec, cluster, result(sha))    # an older Job: no estimate, nothing written
    assert "performance" not in status
