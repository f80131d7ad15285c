"""A rollout's harm watch compares the new adapter with a drift window of the one it replaces. The
full chaos run once judged a harmful adapter against a window from the adapter before (and from a
rollout that mixed both), and the harm passed unseen. Now only a window that one version served
alone is a baseline; a watched rollout waits for one while traffic fills it, at most watchSeconds.

Real handler step (`rollout.accept_version`), a real file:// registry, real Kopf patches."""
from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import kopf
import pytest
import torch
import yaml

from model_handler.model import ModelSpec, SelfHealingNet, adapter_to_bytes
from model_handler.registry import AdapterRegistry
from shm_operator import memory, observe, rollout
from shm_operator.context import ModelPass
from shm_operator.crd import SelfHealingModelStatus
from shm_operator.status import full_spec, iso, written_status

T = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fraud" / "selfhealingmodel.yaml"
V2_WINDOW = {"samples": 500, "ruleConflict": 0.01, "classRates": {"legit": 0.97, "fraud": 0.03}, "adapter": "v2"}


@pytest.fixture
def events(monkeypatch) -> list[tuple[str, str]]:
    posted = []
    for poster in ("info", "warn"):
        monkeypatch.setattr(kopf, poster, lambda body, reason, message, p=poster: posted.append((reason, message)))
    return posted


@pytest.fixture
def spec(tmp_path) -> dict:
    spec = full_spec(yaml.safe_load(EXAMPLE.read_text())["spec"])
    (tmp_path / "store").mkdir()
    spec["storage"]["uri"] = (tmp_path / "store").as_uri()
    spec["promotion"]["rollback"]["watchSeconds"] = 60
    spec["drift"]["checkIntervalSeconds"] = 5
    registry = AdapterRegistry(spec["storage"]["uri"], "ns", "fraud")
    tensors = SelfHealingNet(ModelSpec(features=["a"], classes=["legit", "fraud"], hidden=[4],
                                       adapter_rank=2)).adapter_state()
    for version in ("v1", "v2", "v90"):
        registry.put(version, adapter_to_bytes(tensors), {"base_model_hash": "b" * 64, "rules_hash": "r"})
    return {**spec, "adapter": {"version": "v90"}}   # a person patches v90 in


def serving_v2(drift: dict) -> dict:
    """v2's rollout (from v1) completed and its watch ended; the last window is `drift`."""
    return {"adapter": {"desired": "v2", "current": "v2", "lastGood": "v2", "podsAtDesired": 2, "podsTotal": 2},
            "drift": drift, "conditions": [], "history": []}


def accept(spec, status, memo, runtime_s=0.0):
    patch = kopf.Patch()
    ctx = ModelPass.of("fraud", "ns", spec, status, body={"metadata": {}}, patch=patch, t=T, memo=memo)
    version = asyncio.run(rollout.accept_version(ctx, runtime=dt.timedelta(seconds=runtime_s)))
    return version, patch


def traffic(seconds_ago: float = 2.0, rows: int = 180) -> kopf.Memo:
    memo = kopf.Memo()
    remembered = memory.of(memo)
    remembered.traffic_at, remembered.window_rows = T - dt.timedelta(seconds=seconds_ago), rows
    return memo


def test_a_window_of_the_replaced_version_is_the_baseline(spec, events):
    version, patch = accept(spec, serving_v2(V2_WINDOW), traffic())
    written = written_status(patch)
    assert version == "v90" and written["rollout"]["watch"] is True
    assert written["rollout"]["baseline"]["ruleConflict"] == 0.01 and written["rollout"]["baseline"]["samples"] == 500
    assert not any(reason in ("WaitingForBaseline", "NoBaseline") for reason, _ in events)


def test_a_window_of_an_earlier_adapter_is_not_a_baseline_so_the_rollout_waits(spec, events):
    stale = {**V2_WINDOW, "ruleConflict": 0.435, "adapter": "v1"}   # drifted traffic, served by v1
    status = serving_v2(stale)
    with pytest.raises(rollout.WaitingForBaseline) as waiting:
        accept(spec, status, traffic())
    assert waiting.value.serving == "v2" and waiting.value.delay == 5
    assert "v90 waits for a drift window of v2 alone (180/" in str(waiting.value)
    assert [reason for reason, _ in events] == ["WaitingForBaseline"]
    # (accept() raised before returning its patch: the same pass again, to see what it writes)
    patch = kopf.Patch()
    with pytest.raises(rollout.WaitingForBaseline):
        ctx = ModelPass.of("fraud", "ns", spec, serving_v2(stale), body={"metadata": {}}, patch=patch, t=T, memo=traffic())
        asyncio.run(rollout.accept_version(ctx, runtime=dt.timedelta(seconds=10)))
    written = written_status(patch)
    assert written["adapter"] == {"pending": "v90"} and "rollout" not in written and not patch.get("spec")

    # A retry after v2's own window completed rolls out, judged against that window.
    status = {**serving_v2(V2_WINDOW), "adapter": {**serving_v2(V2_WINDOW)["adapter"], "pending": "v90"}}
    version, patch = accept(spec, status, traffic(), runtime_s=15)
    written = written_status(patch, {"status": status})
    assert version == "v90" and written["rollout"]["baseline"]["ruleConflict"] == 0.01
    assert "pending" not in written["adapter"]


def test_a_mixed_window_is_not_a_baseline_either(spec, events):
    with pytest.raises(rollout.WaitingForBaseline):
        accept(spec, serving_v2({**V2_WINDOW, "adapter": None}), traffic())


@pytest.mark.parametrize("memo, runtime_s, why", [
    (kopf.Memo(), 0.0, "no traffic seen (an idle model would wait in vain)"),
    (traffic(seconds_ago=60), 0.0, "traffic stopped a minute ago"),
    (traffic(), 60.0, "waited watchSeconds already"),
])
def test_without_traffic_or_after_watch_seconds_it_rolls_out_and_says_it_has_no_baseline(spec, events, memo,
                                                                                         runtime_s, why):
    version, patch = accept(spec, serving_v2({**V2_WINDOW, "adapter": "v1"}), memo, runtime_s)
    written = written_status(patch)
    assert version == "v90", why
    assert written["rollout"]["baseline"]["samples"] == 0   # the watch then says NoBaseline, never rolls back
    assert [reason for reason, _ in events if reason.endswith("Baseline")] == ["NoBaseline"]


def test_a_move_to_a_safe_harbour_never_waits(spec, events):
    for target in ("base", "v2"):   # base, and the last good version, are not watched
        status = serving_v2({**V2_WINDOW, "adapter": "v1"})
        status["adapter"] = {**status["adapter"], "desired": "v90", "current": "v90"}
        version, _ = accept({**spec, "adapter": {"version": target}}, status, traffic())
        assert version == target


def test_patching_back_while_a_rollout_waits_clears_the_wait(spec, events):
    status = serving_v2({**V2_WINDOW, "adapter": "v1"})
    status["adapter"]["pending"] = "v90"
    version, patch = accept({**spec, "adapter": {"version": "v2"}}, status, traffic())
    assert version == "v2" and "pending" not in written_status(patch, {"status": status})["adapter"]


@pytest.mark.parametrize("rollout_state, current, expected", [
    (None, "v2", "v2"),                                                   # nothing under way
    ({"to": "v2", "complete": iso(T)}, "v2", "v2"),                       # watched; windows restarted at complete
    ({"to": "v2", "complete": None}, "v2", None),                         # pods still switching
    (None, None, None),                                                   # pods serve different versions
    (None, "v1", None),                                                   # not what is desired
])
def test_which_adapter_a_window_belongs_to(rollout_state, current, expected):
    status = SelfHealingModelStatus.model_validate({"adapter": {"desired": "v2"},
                                                    **({"rollout": rollout_state} if rollout_state else {})})
    assert observe.window_adapter(status, {"current": current}) == expected


def test_a_planned_wait_is_not_counted_as_a_reconcile_error():
    from shm_operator import metrics

    @metrics.count_errors
    async def handler(namespace, name):
        raise rollout.WaitingForBaseline("waits", serving="v2", delay=5)

    errors = metrics.RECONCILE_ERRORS.labels("ns", "wait", "handler")
    before = errors._value.get()
    with pytest.raises(rollout.WaitingForBaseline):
        asyncio.run(handler(namespace="ns", name="wait"))
    assert errors._value.get() == before
