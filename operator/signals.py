"""Reading drift from the pods: fetch each ready pod's status, merge exactly, score full windows.

Each pod reports cumulative counters (all its workers merged). The operator keeps, per pod (by
uid), the last counters it saw; the increments of all pods are summed into a pending window, and
once the window holds `windowRows` rows it is scored and the heal trigger is fed. Sums of counters
only: merging pods never averages p-values or scores. A pod whose counters went backwards
restarted; its new counters are its increment. A pod that stops answering contributes nothing
until it answers again (and is listed as unreachable in the status).
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Mapping

import aiohttp

from model_handler import drift
from model_handler.drift import DriftScores, HealTrigger
from model_handler.rules import RuleSet
from model_handler.sketches import CounterResetError, DriftSketch, ReferenceProfile, SketchError
from shm_operator.children import container_port
from shm_operator.crd import DriftSpec

log = logging.getLogger(__name__)


class PodUnreachable(Exception):
    """A pod's status could not be fetched or parsed; the message says why."""


async def fetch_pod_status(session: aiohttp.ClientSession, pod: dict, model_name: str,
                           timeout: float = 5.0) -> dict:
    """TorchServe's describe API with customized=true returns the handler's merged pod status."""
    ip = (pod.get("status") or {}).get("podIP")
    port = container_port(pod, "management")
    if not ip or not port:
        raise PodUnreachable("pod has no IP or no port named 'management'")
    url = f"http://{ip}:{port}/models/{model_name}?customized=true"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise PodUnreachable(f"GET {url}: HTTP {response.status}: {(await response.text())[:200]}")
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as err:
        raise PodUnreachable(f"GET {url}: {type(err).__name__}: {err}") from err
    try:
        custom = body[0]["customizedMetadata"]
        return json.loads(custom) if isinstance(custom, str) else custom
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise PodUnreachable(f"GET {url}: no customized status in the answer ({err})") from err


@dataclass
class WindowState:
    """Per-model memory between polls (lost on operator restart: the next window starts afresh)."""

    reference: ReferenceProfile | None = None
    last: dict[str, DriftSketch] = field(default_factory=dict)  # pod uid -> last cumulative sketch
    pending: DriftSketch | None = None
    backbone_hash: str = ""   # what the pods last reported serving: adapters must name it (rollout.verified_meta)

    def add(self, pod_uid: str, cumulative: DriftSketch) -> None:
        previous = self.last.get(pod_uid)
        self.last[pod_uid] = cumulative
        if previous is None:
            return  # first sight of this pod (or of any pod after a restart): a baseline, no window
        try:
            increment = cumulative - previous
        except CounterResetError:
            increment = cumulative  # the pod restarted: everything it counted is new
        self.pending = increment if self.pending is None else self.pending + increment

    def forget_missing(self, live_uids: set[str]) -> None:
        for uid in set(self.last) - live_uids:
            del self.last[uid]

    def take_window(self, rows: int) -> DriftSketch | None:
        if self.pending is None or self.pending.n < rows:
            return None
        window, self.pending = self.pending, None
        return window


def reference_of(status: dict, state: WindowState) -> ReferenceProfile:
    """Pods ship their reference profile; keep one and insist all pods agree on it."""
    ref = ReferenceProfile.from_dict(status["reference"])
    if state.reference is None or state.reference.fingerprint != ref.fingerprint:
        if state.reference is not None:
            log.warning("reference profile changed (new model archive?): restarting drift windows")
            state.last.clear()
            state.pending = None
        state.reference = ref
    return state.reference


def ingest(state: WindowState, pod_uid: str, status: dict) -> None:
    reference = reference_of(status, state)
    state.backbone_hash = status.get("backbone_hash") or state.backbone_hash
    try:
        sketch = DriftSketch.from_dict(status["sketch"], reference)
    except (KeyError, SketchError) as err:
        raise PodUnreachable(f"pod status has no usable sketch: {err}") from err
    state.add(pod_uid, sketch)


def score_window(window: DriftSketch, state: WindowState, rules: RuleSet) -> DriftScores:
    """Deprecated: scores with drift_scores' default minSamples (200), whatever spec.drift says. The
    operator scores with `policy.score`; this stays only for tests/test_bench_loop.py, which shows
    the old behaviour."""
    return drift.drift_scores(window, state.reference, rules)


def drift_spec_of(drift_spec: DriftSpec | Mapping) -> DriftSpec:
    """spec.drift as its model: given (the operator's typed spec), or validated from a mapping (the
    healing bench's JSON spec); its defaults are crd.py's."""
    return drift_spec if isinstance(drift_spec, DriftSpec) else DriftSpec.model_validate(dict(drift_spec))


def trigger_from(drift_spec: DriftSpec | Mapping, saved: dict | None) -> HealTrigger:
    """The heal trigger with thresholds from spec.drift and state from status.drift.trigger (a state
    saved before the trigger named its signals reads too)."""
    typed = drift_spec_of(drift_spec)
    thresholds = {"input_on": typed.input_on, "input_off": typed.input_off,
                  "conflict_on": typed.conflict_on, "conflict_off": typed.conflict_off,
                  "label_on": typed.label_shift_on, "label_off": typed.label_shift_off,
                  "persistence": typed.persistence}
    return drift.HealTrigger.from_dict(saved, **thresholds) if saved else drift.HealTrigger(**thresholds)


def describe(scores: DriftScores, trigger: HealTrigger) -> str:
    """One line for a person: model_handler.drift.describe (the signals on, their values, the top
    features, and why a signal that cannot see this window is silent), plus, for every other signal
    that is off, why: below its on threshold, or at it but not significant."""
    text = drift.describe(scores, trigger)
    on = set(trigger.on(scores)) if hasattr(trigger, "on") else set(trigger.signals)
    silent = getattr(scores, "silent", None) or {}
    values = {"input": (scores.input_shift, trigger.input_on, "inputOn"),
              "label": (scores.label_shift, trigger.label_on, "labelShiftOn"),
              "rules": (scores.rule_conflict, trigger.conflict_on, "conflictOn")}
    why = [f"{signal} off: {value:.3f} below {name} {threshold:g}" if value < threshold else
           f"{signal} off: {value:.3f} reaches {name} {threshold:g} but is not significant in this window"
           for signal, (value, threshold, name) in values.items() if signal not in on and signal not in silent]
    return "; ".join([text, *why])


def class_rates(window: DriftSketch) -> dict[str, float]:
    counts = window.counters["predicted"]
    return {name: round(float(c) / max(window.n, 1), 5) for name, c in zip(window.reference.classes, counts)}


def _relative(value: float, on: float) -> float:
    return value / on if on > 0 else 1.0


def drift_summary(scores: DriftScores, trigger: HealTrigger, since: str | None, rates: dict[str, float]) -> dict:
    """The concise status.drift: numbers a person reads, never raw sketches.

    score = the strongest of the three signals relative to its on threshold: >= 1 means a signal
    reached it (the trigger also asks for significance and persistence). `signals` are those on in
    the last window that had enough rows.
    """
    score = max(_relative(scores.input_shift, trigger.input_on), _relative(scores.label_shift, trigger.label_on),
                _relative(scores.rule_conflict, trigger.conflict_on))
    return {"score": round(score, 3),
            "inputShift": round(scores.input_shift, 4), "labelShift": round(scores.label_shift, 4),
            "ruleConflict": round(scores.rule_conflict, 4), "predictionShift": round(scores.prediction_shift, 4),
            "signals": list(trigger.signals), "topFeatures": scores.top_features,
            "samples": scores.samples, "since": since, "classRates": rates, "trigger": trigger.to_dict()}
