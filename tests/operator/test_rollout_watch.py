"""The watch after a rollout, on its own: a heal that ends a collapse swings the class rates a
lot, but back towards the training data's, and must not be rolled back, even when the operator
restarted just before the rollout and had no training rates to record in its baseline."""
from __future__ import annotations

import asyncio
import datetime as dt

import kopf
import yaml

from shm_operator import monitor
from shm_operator.status import full_spec, iso
from sandbox_helpers import REPO_ROOT

T = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
TRAINING = {"legit": 0.965, "fraud": 0.035}
COLLAPSED = {"legit": 0.004, "fraud": 0.996}
HEALED = {"legit": 0.974, "fraud": 0.026}


def watch(baseline_reference: dict, memo_reference: dict | None) -> kopf.Patch:
    spec = full_spec(yaml.safe_load((REPO_ROOT / "examples" / "fraud" / "selfhealingmodel.yaml").read_text())["spec"])
    rollout = {"from": "base", "to": "v1", "strategy": "RollingRestart", "started": iso(T - dt.timedelta(seconds=40)),
               "complete": iso(T - dt.timedelta(seconds=30)), "watch": True,
               "baseline": {"samples": 800, "ruleConflict": 0.2, "classRates": COLLAPSED,
                            "referenceClassRates": baseline_reference}}
    status = {"rollout": rollout, "adapter": {"desired": "v1", "current": "v1", "lastGood": "base",
                                              "podsAtDesired": 2}}
    memo = kopf.Memo()
    if memo_reference is not None:
        memo["reference_class_rates"] = memo_reference
    fresh = {"samples": 500, "ruleConflict": 0.0, "classRates": HEALED}
    patch = kopf.Patch()
    asyncio.run(monitor.watch_rollout("fraud", "ns", spec, status, None, memo, patch, fresh, T))
    return patch


def test_a_heal_that_ends_a_collapse_is_not_harm():
    assert not watch(TRAINING, None).get("spec")


def test_nor_after_an_operator_restart_that_lost_the_training_rates():
    assert not watch({}, TRAINING).get("spec")
