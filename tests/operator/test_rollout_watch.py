"""The watch after a rollout, on its own: a heal that ends a collapse swings the class rates a
lot, but back towards the training data's, and must not be rolled back, even when the operator
restarted just before the rollout and had no training rates to record in its baseline. And a watch
that live traffic never judged (an idle model) ends without making the version the last good one."""
from __future__ import annotations

import asyncio
import copy
import datetime as dt

import kopf
import yaml

from shm_operator import memory
from shm_operator.context import ModelPass
from shm_operator.rollout import watch_rollout
from shm_operator.status import full_spec, iso
from sandbox_helpers import REPO_ROOT
from test_concurrent_writes import land

T = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
TRAINING = {"legit": 0.965, "fraud": 0.035}
COLLAPSED = {"legit": 0.004, "fraud": 0.996}
HEALED = {"legit": 0.974, "fraud": 0.026}


def example_spec() -> dict:
    return full_spec(yaml.safe_load((REPO_ROOT / "examples" / "fraud" / "selfhealingmodel.yaml").read_text())["spec"])


def watch(baseline_reference: dict, memo_reference: dict | None) -> kopf.Patch:
    spec = example_spec()
    rollout = {"from": "base", "to": "v1", "strategy": "RollingRestart", "started": iso(T - dt.timedelta(seconds=40)),
               "complete": iso(T - dt.timedelta(seconds=30)), "watch": True,
               "baseline": {"samples": 800, "ruleConflict": 0.2, "classRates": COLLAPSED,
                            "referenceClassRates": baseline_reference}}
    status = {"rollout": rollout, "adapter": {"desired": "v1", "current": "v1", "lastGood": "base",
                                              "podsAtDesired": 2}}
    memo = kopf.Memo()
    if memo_reference is not None:
        memory.of(memo).reference_class_rates = memo_reference
    fresh = {"samples": 500, "ruleConflict": 0.0, "classRates": HEALED}
    patch = kopf.Patch()
    asyncio.run(watch_rollout(ModelPass.of("fraud", "ns", spec, status, body=None, patch=patch, t=T, memo=memo), fresh=fresh))
    return patch


def test_a_heal_that_ends_a_collapse_is_not_harm():
    assert not watch(TRAINING, None).get("spec")


def test_nor_after_an_operator_restart_that_lost_the_training_rates():
    assert not watch({}, TRAINING).get("spec")


def check(status: dict, fresh: dict | None) -> dict:
    """One timer check of the watch, its patch landed as Kopf lands it; the status it leaves."""
    spec = example_spec()
    patch = kopf.Patch()
    ctx = ModelPass.of("fraud", "ns", spec, copy.deepcopy(status), body=None, patch=patch, t=T, memo=kopf.Memo())
    asyncio.run(watch_rollout(ctx, fresh=fresh))
    return land({"status": status}, patch)["status"]


def end_of_watch(rows_before: int, fresh: dict | None, monkeypatch) -> tuple[dict, list[tuple[str, str]]]:
    """The check that ends v1's watch (watchSeconds after every pod served it): the status it
    leaves, and the Events it posts."""
    events = []
    for poster in ("info", "warn"):
        monkeypatch.setattr(kopf, poster, lambda body, reason, message: events.append((reason, message)))
    watch_seconds = example_spec()["promotion"]["rollback"]["watchSeconds"]
    rollout = {"from": "base", "to": "v1", "strategy": "HotSwap", "started": iso(T - dt.timedelta(seconds=watch_seconds + 5)),
               "complete": iso(T - dt.timedelta(seconds=watch_seconds)), "watch": True, "watchedRows": rows_before,
               "baseline": {"samples": 800, "ruleConflict": 0.0, "classRates": TRAINING,
                            "referenceClassRates": TRAINING}}
    status = {"rollout": rollout, "adapter": {"desired": "v1", "current": "v1", "lastGood": "base", "podsAtDesired": 2}}
    return check(status, fresh), events


def test_a_watch_without_live_traffic_does_not_make_the_last_good_version(monkeypatch):
    # An idle model: the watch time passed, but no window of v1 ever completed.
    status, events = end_of_watch(0, None, monkeypatch)
    assert "rollout" not in status                         # the watch is over: v1 keeps serving
    assert status["adapter"]["lastGood"] == "base"         # but nothing vouched for it
    assert [reason for reason, _ in events] == ["WatchInconclusive"]
    assert "served 0 live rows" in events[0][1] and "stays base" in events[0][1]


def test_live_rows_counted_over_the_watch_make_it_the_last_good_version(monkeypatch):
    status, events = end_of_watch(500, None, monkeypatch)   # windows judged earlier in the watch
    assert "rollout" not in status and status["adapter"]["lastGood"] == "v1"
    assert [reason for reason, _ in events] == ["RolloutHealthy"]
    # the window that completes on the last check counts too
    status, events = end_of_watch(0, {"samples": 500, "ruleConflict": 0.0, "classRates": TRAINING}, monkeypatch)
    assert status["adapter"]["lastGood"] == "v1" and "on 500 live rows" in events[0][1]


def test_each_window_of_the_watch_is_counted_in_the_status():
    """The count lives in status.rollout, so an operator restarted mid-watch keeps it."""
    rollout = {"from": "base", "to": "v1", "strategy": "HotSwap", "started": iso(T - dt.timedelta(seconds=15)),
               "complete": iso(T - dt.timedelta(seconds=10)), "watch": True, "watchedRows": 300,
               "baseline": {"samples": 800, "ruleConflict": 0.0, "classRates": TRAINING}}
    status = {"rollout": rollout, "adapter": {"desired": "v1", "current": "v1", "lastGood": "base"}}
    status = check(status, {"samples": 500, "ruleConflict": 0.0, "classRates": TRAINING})
    assert status["rollout"]["watchedRows"] == 800 and status["adapter"]["lastGood"] == "base"
    assert check(status, None) == status   # no window this check: nothing to write
