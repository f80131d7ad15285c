"""Honest readiness (shm_operator.readiness, via the timer's real `observe_pods`): Ready only when
`spec.replicas` pods are ready and serve spec.adapter.version; the pods' waiting reasons in the
condition, an Event and the phase. Pods are dicts as a kubelet reports them, the describe answers
are built here, Events are recorded instead of posted. The same behaviour against the sandbox's
real pods, with kubectl wait, is tests/operator/test_readiness_e2e.py."""
from __future__ import annotations

import asyncio
import datetime as dt

import kopf
import pytest

from shm_operator import healing, k8s, observe
from shm_operator.context import ModelPass
from shm_operator.crd import LastHeal
from shm_operator.status import full_spec, phase_of, written_status

T = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
SPEC = full_spec({"model": {"archive": "/m"}, "features": ["a"], "classes": ["x", "y"], "replicas": 2,
                  "adapter": {"version": "v2"}})
BODY = {"metadata": {"name": "m", "namespace": "ns", "generation": 7}}


def pod(name, *, ready=False, phase="Running", waiting=None, message="", restarts=0, last_exit=None, init=None,
        scheduled=True):
    state = {"waiting": {"reason": waiting, "message": message}} if waiting else {"running": {"startedAt": "t"}}
    container = {"name": "model-server", "ready": ready, "restartCount": restarts, "state": state,
                 "lastState": {"terminated": {"exitCode": last_exit, "reason": "Error"}} if last_exit else {}}
    status = {"phase": phase, "podIP": "127.0.0.9", "containerStatuses": [container],
              "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if init:
        status["initContainerStatuses"] = [{"name": "fetch-model", "ready": False, "restartCount": 2,
                                            "state": {"waiting": {"reason": init, "message": "back-off"}}}]
        status["containerStatuses"][0]["state"] = {"waiting": {"reason": "PodInitializing"}}
    if not scheduled:
        status = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                      "reason": "Unschedulable",
                                                      "message": "0/3 nodes match the pod's node selector"}]}
    return {"metadata": {"name": name, "uid": name}, "status": status}


class Check:
    """Runs the timer's pod check over the given pods, keeping the status between checks."""

    def __init__(self, monkeypatch):
        self.status = {"adapter": {"desired": "v2", "lastGood": "base"}}
        self.pods, self.versions, self.events = [], {}, []

        async def answer(session, pod, model_name, timeout=5.0):
            return {"adapter": {"version": self.versions[pod["metadata"]["name"]]}}

        monkeypatch.setattr(observe, "fetch_pod_status", answer)
        monkeypatch.setattr(observe, "ingest", lambda *args: None)
        for poster in ("info", "warn"):
            monkeypatch.setattr(kopf, poster, lambda body, *, reason, message, **_: self.events.append(
                (reason, message)))

    def __call__(self, pods, versions=None) -> dict:
        self.pods, self.versions = pods, versions or {}
        patch = kopf.Patch()
        ctx = ModelPass.of("m", "ns", SPEC, dict(self.status), body=BODY, patch=patch, t=T, memo=kopf.Memo())
        asyncio.run(observe.observe_pods(ctx, pods=self.pods))
        self.status = written_status(patch, {"status": self.status})
        self.status["phase"] = phase_of(self.status)
        return next(c for c in self.status["conditions"] if c["type"] == "Ready")


@pytest.fixture
def check(monkeypatch) -> Check:
    return Check(monkeypatch)


def test_ready_only_when_every_wanted_pod_serves_the_spec_version(check):
    ready = check([pod("p1", ready=True), pod("p2")], {"p1": "v2"})
    assert (ready["status"], ready["reason"]) == ("False", "PodsNotReady")
    assert check.status["phase"] == "Serving" and check.status["readyReplicas"] == 1
    ready = check([pod("p1", ready=True), pod("p2", ready=True)], {"p1": "v2", "p2": "v1"})
    assert (ready["status"], ready["reason"]) == ("False", "AdapterNotServed") and "serve v1" in ready["message"]
    ready = check([pod("p1", ready=True), pod("p2", ready=True)], {"p1": "v2", "p2": "v2"})
    assert (ready["status"], ready["reason"]) == ("True", "PodsReady")
    assert ready["observedGeneration"] == 7          # kubectl wait compares it with metadata.generation
    assert (check.status["replicas"], check.status["readyReplicas"]) == (2, 2)
    # pods that only start are not news; Ready turning True is
    assert [reason for reason, _ in check.events] == ["PodsReady"]


@pytest.mark.parametrize("pods, reason, words", [
    ([pod("p1", phase="Pending", waiting="ImagePullBackOff", message='Back-off pulling image "r.invalid/m:1"'),
      pod("p2", phase="Pending", waiting="ErrImagePull", message="no such host")],
     "PodsFailing", ["p1: ImagePullBackOff", "r.invalid/m:1", "p2: ErrImagePull"]),
    ([pod("p1", waiting="CrashLoopBackOff", message="back-off 4s", restarts=3, last_exit=1),
      pod("p2", restarts=2, last_exit=137)],   # between two back-offs: running, not ready
     "CrashLoopBackOff", ["p1: CrashLoopBackOff", "last exit code 1", "p2: CrashLoopBackOff", "137"]),
    ([pod("p1", phase="Pending", waiting="CreateContainerConfigError", message='secret "s3" not found')] * 2,
     "CreateContainerConfigError", ['secret "s3" not found']),
    ([pod("p1", phase="Pending", init="CrashLoopBackOff")] * 2, "Init:CrashLoopBackOff", ["fetch-model"]),
    ([pod("p1", scheduled=False)] * 2, "Unschedulable", ["node selector"]),
])
def test_no_ready_pod_names_why_in_the_condition_an_event_and_the_phase(check, pods, reason, words):
    ready = check(pods)
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert all(word in ready["message"] for word in words), ready["message"]
    assert check.status["phase"] == "Unavailable" and check.status["readyReplicas"] == 0
    assert check.events == [(reason, ready["message"])]
    check(pods)
    assert len(check.events) == 1                     # one Event per new reason, not per check


def test_failing_pods_beside_serving_ones_degrade_and_recovery_is_told(check):
    ready = check([pod("p1", ready=True), pod("p2", waiting="CrashLoopBackOff", restarts=1, last_exit=1)],
                  {"p1": "v2"})
    assert ready["reason"] == "CrashLoopBackOff" and check.status["phase"] == "Degraded"
    ready = check([pod("p1", ready=True), pod("p2", ready=True)], {"p1": "v2", "p2": "v2"})
    assert ready["status"] == "True" and check.status["phase"] == "Serving"
    assert [reason for reason, _ in check.events] == ["CrashLoopBackOff", "PodsReady"]


def test_pods_that_only_start_are_pending_not_unavailable(check):
    ready = check([pod("p1", phase="Pending", waiting="ContainerCreating"), pod("p2")])
    assert ready["reason"] == "PodsNotReady" and check.status["phase"] == "Pending"


def test_the_timer_checks_fast_until_ready_for_this_generation():
    from shm_operator.readiness import ready_for
    ready = {"type": "Ready", "status": "True", "observedGeneration": 7}
    assert ready_for({"conditions": [ready]}, 7)
    assert not ready_for({"conditions": [ready]}, 8)          # the spec changed since: not yet known
    assert not ready_for({"conditions": [{**ready, "status": "False"}]}, 7)


def test_heal_job_gets_its_ttl_only_once_its_result_is_stored(monkeypatch):
    """The TTL starts the Job's (and its pod's, which holds the result) deletion: it is set from
    the stored status, never in the pass that reads the result, and only once."""
    calls = []

    async def read(kind, namespace, name):
        calls.append(("read", name))
        return {"metadata": {"labels": {"selfheal.io/model": "m", "selfheal.io/component": "heal"}}, "spec": {}}

    async def patch(kind, namespace, name, body):
        calls.append(("patch", name, body))
    monkeypatch.setattr(k8s, "read", read)
    monkeypatch.setattr(k8s, "patch", patch)
    memo = kopf.Memo()
    ctx = ModelPass.of("m", "ns", SPEC, {}, body={}, patch=kopf.Patch(), t=T, memo=memo)
    asyncio.run(healing.expire_heal_job(ctx, recorded_heal=LastHeal(job="m-heal-1", result="Running")))
    assert calls == []
    for _ in range(2):
        asyncio.run(healing.expire_heal_job(ctx, recorded_heal=LastHeal(job="m-heal-1", result="Promoted")))
    assert calls == [("read", "m-heal-1"), ("patch", "m-heal-1", {"spec": {"ttlSecondsAfterFinished": 86_400}})]


@pytest.mark.parametrize("reported, reason", [
    ("CrashLoopBackOff", "CrashLoopBackOff"), ("Init:ErrImagePull", "Init:ErrImagePull"),
    ("Container Cannot Run", "ContainerCannotRun"), ("node-shutdown", "nodeshutdown"), ("", "PodsFailing"),
    ("42:", "PodsFailing"),
])
def test_any_reason_a_kubelet_reports_becomes_a_valid_condition_reason(reported, reason):
    from shm_operator.decisions import condition
    from shm_operator.readiness import condition_reason
    assert condition_reason(reported) == reason
    condition("Ready", False, condition_reason(reported), "", T)   # raises on an invalid reason


def test_an_evicted_pod_with_an_odd_reason_still_gives_a_condition(check):
    evicted = {"metadata": {"name": "p1", "uid": "p1"},
               "status": {"phase": "Failed", "reason": "Evicted by node-pressure", "message": "low on memory"}}
    ready = check([evicted, pod("p2", phase="Pending", waiting="ContainerCreating")])
    assert ready["status"] == "False" and ready["reason"] == "PodsNotReady"   # a failed pod is gone, not failing
