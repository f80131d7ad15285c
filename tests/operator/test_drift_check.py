"""The drift check of the operator's timer (`observe.observe_pods`) over a fake pod: real sketches,
the real merge, scoring and trigger; the pod's describe answer is built in the test, so each
window's traffic is chosen exactly. Events are recorded instead of posted."""
from __future__ import annotations

import asyncio
import copy
import datetime as dt

import kopf
import numpy as np
import pytest

from model_handler.rules import RuleSet
from model_handler.sketches import DriftSketch, ReferenceProfile
from shm_operator import observe
from shm_operator.context import ModelPass
from shm_operator.status import full_spec, written_status

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
FEATURES = ["amount", "merchant_age", "hour", "velocity"]
CLASSES = ["legit", "fraud"]
RULES = [{"name": "new_merchant", "when": "merchant_age < 30", "label": "fraud"},
         {"name": "big_amount", "when": "amount > 150", "label": "fraud"},
         {"name": "slow", "when": "velocity <= 1", "label": "legit", "weight": 0.5}]
POD = {"metadata": {"name": "m-serving-0", "uid": "pod-1"},
       "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}


def traffic(n, rng, *, amount_scale=1.0, broken_model=False, night_only=False):
    """Rows and a model's probabilities (the generator of tests/test_drift.py). The model ignores
    `hour` and no rule reads it: `night_only` moves the inputs and nothing else."""
    x = np.column_stack([rng.lognormal(3.5, 1.0, n) * amount_scale, rng.exponential(100, n),
                         rng.integers(0, 6 if night_only else 24, n), rng.poisson(2, n)]).astype(np.float32)
    new_merchant = (x[:, 1] < 30) * (-3.0 if broken_model else 3.0)
    logit = 1.5 * (np.log(np.maximum(x[:, 0], 1e-3)) - 4.5) + new_merchant + 0.5 * (x[:, 3] - 2) - 0.5
    fraud = 1 / (1 + np.exp(-logit))
    return x, np.column_stack([1 - fraud, fraud])


class Pod:
    """One serving pod's cumulative drift status, as its describe answer carries it."""

    def __init__(self, reference: ReferenceProfile, rules: RuleSet):
        self.reference, self.rules = reference, rules
        self.sketch = DriftSketch.empty(reference, len(rules), rules.hash())

    def serve(self, rows: int, rng, **kind) -> None:
        x, probs = traffic(rows, rng, **kind)
        self.sketch.update(x, probs, self.rules.fires(x).numpy(), self.rules.labels)

    def answer(self) -> dict:
        return {"adapter": {"version": "base"}, "reference": self.reference.to_dict(),
                "sketch": self.sketch.to_dict()}


class Model:
    """A SelfHealingModel's status and the timer's memory across drift checks."""

    def __init__(self, monkeypatch, **drift):
        self.spec = full_spec({"model": {"archive": "/models/m"}, "replicas": 1, "features": FEATURES,
                               "classes": CLASSES, "rules": RULES, "drift": drift})
        self.rules = RuleSet.from_dicts(self.spec["rules"], FEATURES, CLASSES)
        rng = np.random.default_rng(0)
        x, probs = traffic(20_000, rng)
        reference = ReferenceProfile.fit(x, probs, self.rules.fires(x).numpy(), self.rules.labels, FEATURES,
                                         CLASSES, rules_hash=self.rules.hash())
        self.pod, self.rng, self.memo, self.t = Pod(reference, self.rules), np.random.default_rng(1), kopf.Memo(), T0
        self.status = {"adapter": {"desired": "base", "lastGood": "base"}}
        self.events: list[tuple[str, str]] = []

        async def answer(session, pod, model_name, timeout=5.0):
            return copy.deepcopy(self.pod.answer())

        monkeypatch.setattr(observe, "fetch_pod_status", answer)
        for poster in ("info", "warn"):
            monkeypatch.setattr(kopf, poster, lambda body, *, reason, message, **_: self.events.append(
                (reason, message)))
        self.check()    # the first sight of the pod is a baseline, no window

    def check(self, rows: int = 0, **kind) -> dict | None:
        """The pod serves `rows` rows, then one drift check; returns the window's summary."""
        if rows:
            self.pod.serve(rows, self.rng, **kind)
        self.t += dt.timedelta(seconds=30)
        patch = kopf.Patch()
        ctx = ModelPass.of("m", "ns", self.spec, copy.deepcopy(self.status), body={}, patch=patch, t=self.t, memo=self.memo,
                           rules=self.rules)
        summary = asyncio.run(observe.observe_pods(ctx, pods=[POD]))
        self.status = written_status(patch, {"status": self.status})
        return summary

    def condition(self, type_: str) -> dict:
        return next((c for c in self.status.get("conditions") or [] if c["type"] == type_), {})


def test_windows_below_200_rows_count_when_min_samples_allows(monkeypatch):
    """spec.drift.minSamples reaches the scores: 100-row windows with minSamples 50 detect drift
    (the scores always used 200, so any windowRows below 200 silently disabled detection)."""
    model = Model(monkeypatch, windowRows=100, minSamples=50, persistence=2)
    summary = model.check(100, amount_scale=100.0, broken_model=True)
    assert summary is not None and summary["samples"] == 100
    assert model.status["drift"]["trigger"]["consecutive"] == 1
    model.check(100, amount_scale=100.0, broken_model=True)
    assert model.status["drift"]["trigger"]["drifting"] is True
    assert model.condition("DriftDetected")["status"] == "True"


def test_a_window_below_min_samples_is_no_evidence(monkeypatch):
    model = Model(monkeypatch, windowRows=100, minSamples=100, persistence=1)
    assert model.check(60, amount_scale=100.0, broken_model=True) is None    # not a full window yet
    assert model.check(60, amount_scale=100.0, broken_model=True)["samples"] == 120
    assert model.status["drift"]["trigger"]["drifting"] is True
    lax = Model(monkeypatch, windowRows=100, minSamples=100, persistence=1)
    lax.spec["drift"]["minSamples"] = 500    # (an invalid spec, kept off by validation: here only the scores)
    lax.check(120, amount_scale=100.0, broken_model=True)
    assert lax.status["drift"]["trigger"] == {"consecutive": 0, "drifting": False, "signals": []}


def test_drift_detected_names_its_signal_and_each_change_is_an_event(monkeypatch):
    model = Model(monkeypatch, windowRows=500, minSamples=200, persistence=2)
    model.events.clear()
    for _ in range(2):
        model.check(500, night_only=True)      # only the inputs move: the model ignores `hour`
    detected = model.condition("DriftDetected")
    assert (detected["status"], detected["reason"]) == ("True", "InputShift")
    assert model.status["drift"]["signals"] == ["input"] and model.status["drift"]["trigger"]["signals"] == ["input"]
    assert "signals on: input" in detected["message"] and "hour" in detected["message"]
    for signal in ("label", "rules"):   # why the other signals are silent
        assert f"{signal} silent: " in detected["message"] or f"{signal} off: " in detected["message"]
    assert "label off: 0.0" in detected["message"] and "below labelShiftOn 0.4" in detected["message"]
    assert [r for r, _ in model.events] == ["DriftDetected"] and model.events[0][1] == detected["message"]

    model.check(500, night_only=True, broken_model=True)   # the model breaks too: more signals, no new Event
    again = model.condition("DriftDetected")
    assert again["reason"] == "SeveralSignals" and again["lastTransitionTime"] == detected["lastTransitionTime"]
    assert {"input", "rules"} <= set(model.status["drift"]["signals"])
    assert [r for r, _ in model.events] == ["DriftDetected"]

    model.check(500)                                        # clean traffic: every signal below off
    cleared = model.condition("DriftDetected")
    assert (cleared["status"], cleared["reason"]) == ("False", "Cleared")
    assert [r for r, _ in model.events] == ["DriftDetected", "DriftCleared"]
    assert model.status["drift"]["signals"] == [] and "labelShift" in model.status["drift"]


def test_label_shift_thresholds_come_from_the_spec(monkeypatch):
    """spec.drift.labelShiftOn/Off reach the trigger: a broken model moves the predicted class
    rates; with labelShiftOn above what it reaches, the label signal stays off."""
    loose = Model(monkeypatch, windowRows=500, persistence=1, labelShiftOn=0.01, labelShiftOff=0.0)
    loose.check(500, broken_model=True)
    strict = Model(monkeypatch, windowRows=500, persistence=1, labelShiftOn=50.0, labelShiftOff=40.0)
    strict.check(500, broken_model=True)
    assert loose.status["drift"]["labelShift"] == strict.status["drift"]["labelShift"] > 0.01
    assert "label" in loose.status["drift"]["signals"] and "label" not in strict.status["drift"]["signals"]
