"""The reconcile handler and the timer run concurrently on one SelfHealingModel, each from a copy
of the status taken when its pass began. In whichever order their patches land, neither may undo
the other's writes. The chaos benchmark caught a timer pass that began just before a `kubectl
patch` and wrote the old `status.adapter.desired` back. The model then stayed RollingOut for ever,
although its pods served the new version.

Real handler steps (`accept_version` for the spec change, `observe_pods` and `watch_rollout` for
the timer), real Kopf patches, applied as Kopf applies them: the merge patch, then the patch
functions on the result."""
from __future__ import annotations

import asyncio
import json
import copy
import datetime as dt
from pathlib import Path

import kopf
import pytest
import yaml

from sandbox.patches import json_patch, merge_patch
from shm_operator import k8s, observe, rollout
from shm_operator.context import ModelPass
from shm_operator.healing import follow_heal
from shm_operator.status import full_spec, iso, phase_of, refresh_phase, set_condition_in, update_adapter

T = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fraud" / "selfhealingmodel.yaml"


def land(body: dict, patch: kopf.Patch) -> dict:
    """What Kopf does with a handler's patch: merge-patch its dict, then run its functions on the
    result and send the difference as a JSON patch."""
    body = merge_patch(body, dict(patch))
    return json_patch(body, patch.as_json_patch(body))


@pytest.fixture(autouse=True)
def no_events(monkeypatch):
    """Events need a running operator; what is under test here is the status."""
    for poster in ("info", "warn"):
        monkeypatch.setattr(kopf, poster, lambda *args, **kwargs: None)


@pytest.fixture
def spec() -> dict:
    spec = full_spec(yaml.safe_load(EXAMPLE.read_text())["spec"])
    spec["promotion"]["rollback"]["watchSeconds"] = 20
    return spec


def serving_v1() -> dict:
    """v1 rolled out 60 s ago and watched for 20 s on 500 live rows: the next check ends its watch."""
    return {"adapter": {"desired": "v1", "lastGood": "base", "podsAtDesired": 2, "podsTotal": 2, "ready": "2/2",
                        "current": "v1"},
            "rollout": {"from": "base", "to": "v1", "strategy": "RollingRestart", "watch": True,
                        "started": iso(T - dt.timedelta(seconds=60)), "complete": iso(T - dt.timedelta(seconds=40)),
                        "watchedRows": 500,
                        "baseline": {"samples": 500, "ruleConflict": 0.3, "classRates": {"legit": 0.1}}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "ChildrenReconciled", "message": "ok",
                            "lastTransitionTime": iso(T)}],
            "phase": "RollingOut", "drift": {"unreachablePods": [], "lastCheck": iso(T)}}


def condition_of(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def timer_pass(spec: dict, status: dict, monkeypatch) -> kopf.Patch:
    patch, status = kopf.Patch(), copy.deepcopy(status)
    ctx = ModelPass.of("fraud", "ns", spec, status, body={}, patch=patch, t=T, memo=kopf.Memo())
    asyncio.run(observe.observe_pods(ctx, pods=[]))
    asyncio.run(rollout.watch_rollout(ctx, fresh=None))
    set_condition_in(patch, status, "DriftDetected", True, "SeveralSignals", "input, rules", t=T)
    refresh_phase(patch, status)   # as tick() ends
    return patch


def reconcile_pass(spec: dict, status: dict, monkeypatch) -> kopf.Patch:
    """A person's `kubectl patch` back to base, as reconcile() accepts it."""
    patch, status, spec = kopf.Patch(), copy.deepcopy(status), {**spec, "adapter": {"version": "base"}}
    version = asyncio.run(rollout.accept_version(ModelPass.of("fraud", "ns", spec, status, body={"metadata": {}}, patch=patch, t=T)))
    update_adapter(patch, status, desired=version)
    set_condition_in(patch, status, "Degraded", True, "AdapterNotFound", "v9 is not in the registry", t=T)
    refresh_phase(patch, status)   # as reconcile() ends
    return patch


@pytest.mark.parametrize("order", ["reconcile lands first", "timer lands first"])
def test_neither_handler_undoes_the_other(spec, monkeypatch, order):
    before = serving_v1()
    tick, change = timer_pass(spec, before, monkeypatch), reconcile_pass(spec, before, monkeypatch)
    body = {"spec": spec, "status": before}
    for patch in ((change, tick) if order.startswith("reconcile") else (tick, change)):
        body = land(body, patch)
    status = body["status"]
    assert status["adapter"]["desired"] == "base"                      # the reconcile handler's
    assert status["adapter"]["lastGood"] == "v1"                       # the timer's: v1's watch ended
    assert status["adapter"]["ready"] == "0/2"                         # the timer's: what the pods said
    assert status["rollout"]["to"] == "base" and status["rollout"]["from"] == "v1"   # not ended by the timer
    assert "complete" not in status["rollout"]
    assert status["rollout"]["baseline"]["classRates"] == {}           # replaced whole, not merged into v1's
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Degraded", "DriftDetected"}
    assert status["phase"] == "Pending"   # the stub lists no pod: nothing serves, which outranks the rollout
    assert status["readyReplicas"] == 0 and condition_of(status, "Ready")["reason"] == "PodsNotReady"
    assert [h["version"] for h in status["history"]] == ["base"]


def test_the_timer_still_ends_its_own_rollout(spec, monkeypatch):
    before = serving_v1()
    status = land({"spec": spec, "status": before}, timer_pass(spec, before, monkeypatch))["status"]
    assert "rollout" not in status and status["adapter"]["lastGood"] == "v1"
    # recomputed on the result: no rollout any more, and no pod ready (the stub lists none)
    assert status["phase"] == "Pending"


def healing() -> dict:
    """A heal Job has been running for a minute."""
    status = serving_v1()
    status.pop("rollout")
    status.update(phase="Healing", lastHeal={"job": "fraud-heal-1", "version": "v2", "parent": "v1", "result": "Running",
                                             "started": iso(T - dt.timedelta(seconds=60)), "finished": None})
    status["conditions"].append({"type": "Healing", "status": "True", "reason": "JobStarted", "message": "v1 -> v2",
                                 "lastTransitionTime": iso(T - dt.timedelta(seconds=60))})
    return status


def consistent(status: dict) -> bool:
    """What a reader may rely on: the Healing condition is True exactly while lastHeal is Running,
    and the phase is the one the rest of the status implies."""
    healing_condition = next((c["status"] for c in status.get("conditions") or [] if c["type"] == "Healing"), "False")
    running = (status.get("lastHeal") or {}).get("result") == "Running"
    return (healing_condition == "True") == running and status.get("phase") == phase_of(status)


def test_a_reader_never_sees_half_a_pass(spec, monkeypatch):
    """Kopf sends a merge patch and the patch functions as two requests; a `kubectl get` between
    them saw `lastHeal.result: Failed` with Healing still True (CI caught it). Every status write is
    a patch function now, so a pass is one request: the body between the two is the old one."""
    async def failed_job(kind, namespace, name):
        return {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}

    async def job_pods(namespace, selector):
        return [{"status": {"containerStatuses": [{"state": {"terminated": {
            "message": json.dumps({"error": "reference.json: no such file"})}}}]}}]
    monkeypatch.setattr(k8s, "read", failed_job)
    monkeypatch.setattr(k8s, "list_pods", job_pods)
    before = healing()
    assert consistent(before)
    patch, status = kopf.Patch(), copy.deepcopy(before)
    asyncio.run(follow_heal(ModelPass.of("fraud", "ns", spec, status, body={}, patch=patch, t=T)))
    refresh_phase(patch, status)   # as tick() ends
    body = {"spec": spec, "status": before}
    between = merge_patch(body, dict(patch))["status"]        # after Kopf's first request
    after = land(body, patch)["status"]                       # after its second
    assert after["lastHeal"]["result"] == "Failed" and after["phase"] != "Healing"
    assert consistent(between) and consistent(after)
