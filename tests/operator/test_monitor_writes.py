"""A drift check writes the status only when something in it changed (or `lastCheck` is old): one
PATCH per model per check was most of the API load of idle models (bench/scale.py measures it)."""
from __future__ import annotations

import asyncio
import datetime as dt

import kopf

from shm_operator import k8s, observe, readiness
from shm_operator.context import ModelPass
from shm_operator.crd import SelfHealingModelSpec
from shm_operator.status import iso, written_status

T = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
SPEC = {"replicas": 1, "drift": {"windowRows": 500}, "model": {"archive": "/m", "name": "m"}, "features": ["a"],
        "classes": ["x", "y"], "adapter": {"version": "base"}}
ADAPTER = {"desired": "base", "lastGood": "base", "podsAtDesired": 0, "podsTotal": 1, "ready": "0/1"}
# what the last check found: no pod (readiness.report_readiness)
NOT_READY = {"conditions": [{"type": "Ready", "status": "False", "reason": "PodsNotReady",
                             "message": readiness.readiness(SelfHealingModelSpec.model_validate(SPEC), [],
                                                            k8s.pod_ready, {})[2],
                             "lastTransitionTime": iso(T - dt.timedelta(seconds=60))}],
             "replicas": 0, "readyReplicas": 0}


def check(status: dict, monkeypatch) -> dict:
    """One observe_pods pass over a model with no ready pod; returns what it would change in the
    stored status, as the JSON merge patch that turns the old status into the new one."""
    patch = kopf.Patch()
    asyncio.run(observe.observe_pods(ModelPass.of("m", "ns", SPEC, dict(status), body={}, patch=patch, t=T, memo=kopf.Memo()),
                                     pods=[]))
    if not patch:
        return {}   # no request at all
    written = changes(status, written_status(patch, {"status": status}))
    assert written, "a patch that changes nothing is still one PATCH request"
    return written


def changes(old: dict, new: dict) -> dict:
    """The keys of `new` that differ from `old`, recursively (nothing is deleted in these cases)."""
    return {k: changes(old.get(k) or {}, v) if isinstance(v, dict) and isinstance(old.get(k), dict) else v
            for k, v in new.items() if old.get(k) != v}


def test_an_unchanged_check_writes_nothing(monkeypatch):
    fresh = {"adapter": ADAPTER, "drift": {"unreachablePods": [], "lastCheck": iso(T - dt.timedelta(seconds=30))},
             **NOT_READY}
    assert check(fresh, monkeypatch) == {}


def test_last_check_is_still_refreshed_now_and_then(monkeypatch):
    old = iso(T - dt.timedelta(seconds=observe.LAST_CHECK_REFRESH_SECONDS))
    patch = check({"adapter": ADAPTER, "drift": {"unreachablePods": [], "lastCheck": old}, **NOT_READY}, monkeypatch)
    assert patch["drift"]["lastCheck"] == iso(T) and "adapter" not in patch


def test_a_change_is_written_with_a_fresh_last_check(monkeypatch):
    recent = iso(T - dt.timedelta(seconds=30))
    patch = check({"adapter": {**ADAPTER, "ready": "1/1", "podsAtDesired": 1},
                   "drift": {"unreachablePods": [], "lastCheck": recent}, **NOT_READY}, monkeypatch)
    assert patch["adapter"]["ready"] == "0/1" and patch["drift"]["lastCheck"] == iso(T)
    first = check({"adapter": ADAPTER}, monkeypatch)     # never checked before
    assert first["drift"] == {"unreachablePods": [], "lastCheck": iso(T)}
