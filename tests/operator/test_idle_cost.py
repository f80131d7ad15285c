"""What an idle model (pods ready, no traffic) costs: the timer's real passes (`monitor.tick`) over
30 simulated minutes, counting every call of `shm_operator.k8s` and every non-empty status patch
(one PATCH each), and every validation of the spec. Pods come from the operator's pod index, so a
check that changes nothing sends nothing; issue 18's target is at most 0.5 calls per minute per
model. The spec is validated once per generation."""
from __future__ import annotations

import asyncio
import datetime as dt
import functools

import kopf
import pytest

from shm_operator import k8s, monitor, observe
from shm_operator.crd import SelfHealingModelSpec
from shm_operator.status import iso, written_status

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
SPEC = {"model": {"archive": "/m"}, "features": ["a"], "classes": ["x", "y"], "replicas": 2,
        "adapter": {"version": "v2"}, "drift": {"checkIntervalSeconds": 30}}
META = {"name": "m", "namespace": "ns", "generation": 3}
MINUTES = 30


def ready_pod(name: str) -> dict:
    return {"metadata": {"name": name, "uid": name},
            "status": {"phase": "Running", "podIP": "127.0.0.9",
                       "containerStatuses": [{"name": "model-server", "ready": True, "restartCount": 0,
                                              "state": {"running": {"startedAt": "t"}}}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Every API call of shm_operator.k8s, by name (none may reach a real cluster here)."""
    made: list[str] = []
    for name in ("read", "patch", "ensure", "create", "create_or_read", "delete", "list_pods"):
        async def call(*args, _name=name, **kwargs):
            made.append(_name)
            return None if _name == "read" else []
        monkeypatch.setattr(k8s, name, call)

    async def answer(session, pod, model_name, timeout=5.0):
        return {"adapter": {"version": "v2"}}   # the pod serves v2 and saw no rows

    monkeypatch.setattr(observe, "fetch_pod_status", answer)
    monkeypatch.setattr(observe, "ingest", lambda *args: None)
    for poster in ("info", "warn"):
        monkeypatch.setattr(kopf, poster, lambda *args, **kwargs: None)
    return made


def run_idle(monkeypatch, calls: list[str], index: dict) -> tuple[int, int]:
    """(k8s calls, status patches) of the timer's passes over MINUTES of an idle model."""
    status = {"adapter": {"desired": "v2", "lastGood": "v2"}, "observedGeneration": 3}
    memo, patches, t = kopf.Memo(), 0, T0
    tick = functools.partial(monitor.tick.__wrapped__, name="m", namespace="ns", spec=SPEC, body={"metadata": META},
                             meta=META, memo=memo, serving_pods=index)
    while t < T0 + dt.timedelta(minutes=MINUTES):
        monkeypatch.setattr(monitor, "now", lambda t=t: t)
        patch = kopf.Patch()
        asyncio.run(tick(status=status, patch=patch))
        if patch:
            patches += 1
            status = written_status(patch, {"status": status})
        t += dt.timedelta(seconds=monitor.TICK_SECONDS)
    return len(calls), patches


def test_an_idle_model_costs_at_most_half_a_call_per_minute(monkeypatch, calls):
    index = {("ns", "m"): [ready_pod("m-1"), ready_pod("m-2")], ("ns", "other"): [ready_pod("o-1")]}
    made, patches = run_idle(monkeypatch, calls, index)
    per_minute = (made + patches) / MINUTES
    assert made == 0, calls          # pods come from the index: no list, no read
    assert per_minute <= 0.5, (made, patches)
    assert patches >= 1              # the first check still writes what it saw (Ready, lastCheck, ...)


def test_the_timer_reads_the_models_own_pods_from_the_index(monkeypatch, calls):
    status = {"adapter": {"desired": "v2", "lastGood": "v2"}, "observedGeneration": 3}
    patch = kopf.Patch()
    monkeypatch.setattr(monitor, "now", lambda: T0)
    asyncio.run(monitor.tick.__wrapped__(name="m", namespace="ns", spec=SPEC, status=status, body={"metadata": META},
                                         meta=META, memo=kopf.Memo(), patch=patch,
                                         serving_pods={("ns", "other"): [ready_pod("o-1"), ready_pod("o-2")]}))
    written = written_status(patch, {"status": status})
    assert written["adapter"]["podsAtDesired"] == 0   # another model's pods are not this model's
    assert written["readyReplicas"] == 0


def test_the_spec_is_validated_once_per_generation(monkeypatch, calls):
    """30 minutes of checks, a rollout's harm watch among them: the spec's model is built once."""
    validated = []
    original = SelfHealingModelSpec.model_validate.__func__

    def counting(cls, *args, **kwargs):
        validated.append(cls.__name__)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(SelfHealingModelSpec, "model_validate", classmethod(counting))
    status = {"adapter": {"desired": "v2", "lastGood": "v1", "current": "v2", "podsAtDesired": 2},
              "rollout": {"from": "v1", "to": "v2", "started": iso(T0), "complete": iso(T0), "watch": True,
                          "baseline": {}}}
    memo, t = kopf.Memo(), T0
    spec = {**SPEC, "promotion": {"rollback": {"watchSeconds": 3600}}}
    while t < T0 + dt.timedelta(minutes=MINUTES):
        monkeypatch.setattr(monitor, "now", lambda t=t: t)
        patch = kopf.Patch()
        asyncio.run(monitor.tick.__wrapped__(name="m", namespace="ns", spec=spec, status=status,
                                             body={"metadata": META}, meta=META, memo=memo, patch=patch,
                                             serving_pods={("ns", "m"): [ready_pod("m-1"), ready_pod("m-2")]}))
        status = written_status(patch, {"status": status})
        t += dt.timedelta(seconds=monitor.TICK_SECONDS)
    assert status.get("rollout"), "the watch ran through the whole test"
    assert validated == ["SelfHealingModelSpec"]
