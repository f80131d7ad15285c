"""The drift check of the operator's timer (`monitor.observe_pods`) over a fake pod: real sketches,
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
from shm_operator import monitor
from shm_operator.status import written_status

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
FEATURES = ["amount", "merchant_age", "hour", "velocity"]
CLASSES = ["legit", "fraud"]
RULES = [{"name": "new_merchant", "when": "merchant_age < 30", "label": "fraud"},
         {"name": "big_amount", "when": "amount > 150", "label": "fraud"},
         {"name": "slow", "when": "velocity <= 1", "label": "legit", "weight": 0.5}]
POD = {"metadata": {"name": "m-serving-0", "uid": "pod-1"},
       "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}


def traffic(n, rng, *, amount_scale=1.0, broken_model=False):
    """Rows, a model's probabilities, and rule firings (the generator of tests/test_drift.py)."""
    x = np.column_stack([rng.lognormal(3.5, 1.0, n) * amount_scale, rng.exponential(100, n),
                         rng.integers(0, 24, n), rng.poisson(2, n)]).astype(np.float32)
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
        self.spec = monitor.full_spec({"model": {"archive": "/models/m"}, "replicas": 1, "features": FEATURES,
                                       "classes": CLASSES, "rules": RULES, "drift": drift})
        self.rules = RuleSet.from_dicts(self.spec["rules"], FEATURES, CLASSES)
        rng = np.random.default_rng(0)
        x, probs = traffic(20_000, rng)
        reference = ReferenceProfile.fit(x, probs, self.rules.fires(x).numpy(), self.rules.labels, FEATURES,
                                         CLASSES, rules_hash=self.rules.hash())
        self.pod, self.rng, self.memo, self.t = Pod(reference, self.rules), np.random.default_rng(1), kopf.Memo(), T0
        self.status = {"adapter": {"desired": "base", "lastGood": "base"}}
        self.events: list[tuple[str, str]] = []

        async def pods(namespace, selector):
            return [POD]

        async def answer(session, pod, model_name, timeout=5.0):
            return copy.deepcopy(self.pod.answer())

        monkeypatch.setattr(monitor.k8s, "list_pods", pods)
        monkeypatch.setattr(monitor, "fetch_pod_status", answer)
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
        summary = asyncio.run(monitor.observe_pods("m", "ns", self.spec, copy.deepcopy(self.status), {}, self.memo,
                                                   self.rules, patch, self.t))
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
    assert lax.status["drift"]["trigger"] == {"consecutive": 0, "drifting": False}
