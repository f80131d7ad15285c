"""One typed context per handler pass (`context.ModelPass`): the timer hands the same pass to every
step; the spec is its Pydantic model and the status is read through crd.py's status models, so a
misspelt field is an AttributeError here rather than a silent None in a cluster."""
from __future__ import annotations

import ast
import asyncio
import datetime as dt
import inspect
from pathlib import Path

import kopf
import pytest

from shm_operator import healing, monitor, observe, rollout
from shm_operator.context import ModelPass
from shm_operator.crd import HealingMode, SelfHealingModelSpec, SelfHealingModelStatus

T = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
SPEC = {"model": {"archive": "/m"}, "features": ["a"], "classes": ["x", "y"], "replicas": 2,
        "adapter": {"version": "v2"}, "healing": {"mode": "Manual", "cooldownSeconds": 60}}
META = {"name": "m", "namespace": "ns", "generation": 3}
STEPS = ("observe_pods", "recheck_registry", "follow_heal", "expire_heal_job", "maybe_heal", "watch_rollout")
OPERATOR = Path(monitor.__file__).resolve().parent


def test_the_timer_hands_one_typed_pass_to_every_step(monkeypatch):
    seen: dict[str, tuple] = {}
    for step in STEPS:
        async def record(ctx, _step=step, **kwargs):
            seen[_step] = (ctx, kwargs)
        monkeypatch.setattr(monitor, step, record)
    monkeypatch.setattr(monitor, "now", lambda: T)
    memo = kopf.Memo()
    status = {"adapter": {"desired": "v2", "lastGood": "v1"},
              "lastHeal": {"job": "m-heal-1", "result": "Promoted", "started": "2026-01-01T11:00:00Z"}}
    asyncio.run(monitor.tick.__wrapped__(name="m", namespace="ns", spec=SPEC, status=status, body={"metadata": META},
                                         meta=META, memo=memo, patch=kopf.Patch(), serving_pods={}))
    assert list(seen) == list(STEPS)                   # in this order, each once
    (ctx,) = {id(c): c for c, _ in seen.values()}.values()   # one and the same pass
    assert isinstance(ctx, ModelPass) and isinstance(ctx.spec, SelfHealingModelSpec)
    assert ctx.spec is memo["model"].prepared[1]      # the model validated once for this generation
    assert ctx.spec.healing.mode is HealingMode.MANUAL and ctx.spec.healing.cooldown_seconds == 60
    assert isinstance(ctx.status, SelfHealingModelStatus) and ctx.adapter.last_good == "v1"
    assert seen["expire_heal_job"][1]["recorded_heal"].job == "m-heal-1"
    assert ctx.t == T and (ctx.name, ctx.namespace) == ("m", "ns")


def test_a_misspelt_field_is_an_error_not_none():
    ctx = ModelPass.of("m", "ns", SPEC, {"adapter": {"desired": "v2", "lastGood": "v1"}}, body={}, patch=kopf.Patch(), t=T)
    assert ctx.working["adapter"].get("lastgood") is None      # what a dict read of the typo gave
    with pytest.raises(AttributeError):
        ctx.status.adapter.lastgood
    with pytest.raises(AttributeError):
        ctx.spec.healing.cooldown


def test_a_later_step_reads_what_an_earlier_step_wrote():
    patch = kopf.Patch()
    ctx = ModelPass.of("m", "ns", SPEC, {"adapter": {"desired": "v2"}}, body={}, patch=patch, t=T)
    assert ctx.adapter.current is None and ctx.status.conditions == []
    ctx.update_adapter(current="v2", podsAtDesired=2)
    ctx.set_condition("Degraded", True, "PodsUnreachable", "1 of 2 pods do not answer")
    assert (ctx.adapter.current, ctx.adapter.pods_at_desired, ctx.adapter.desired) == ("v2", 2, "v2")
    (degraded,) = ctx.status.conditions
    assert (degraded.type, degraded.status, degraded.reason) == ("Degraded", "True", "PodsUnreachable")
    assert patch.fns, "the writes go through status.py's patch functions"


@pytest.mark.parametrize("step", [observe.observe_pods, healing.recheck_registry, healing.follow_heal,
                                  healing.expire_heal_job, healing.maybe_heal, rollout.watch_rollout,
                                  rollout.accept_version])
def test_each_step_takes_the_pass_and_keyword_only_arguments(step):
    first, *rest = inspect.signature(step).parameters.values()
    assert first.name == "ctx"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest), step.__name__


@pytest.mark.parametrize("module", ["monitor.py", "observe.py", "healing.py", "rollout.py", "reconcile.py"])
def test_the_handlers_read_no_spec_or_status_by_key(module):
    """`spec["healing"]["mode"]` or `status.get("lastHeal")` in a handler: a typo there reads None
    (or a KeyError in production only); the typed pass is the way to read them."""
    tree = ast.parse((OPERATOR / module).read_text())
    found = []
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):   # writes go through status.py
            target = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            target = node.func.value
        if isinstance(target, ast.Name) and target.id in ("spec", "status"):
            found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
