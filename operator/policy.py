"""The steps of the operator's per-model loop that the healing benchmark replays, as pure functions.

monitor.py gathers the facts (pods' sketches, the Job's result, the clock) and applies what these
return; `bench.healing` calls the same functions on a simulated clock, so the benchmark measures
the operator's own decisions: how a window is scored, when drift is declared and since when, what
a finished heal Job leads to, and whether a rollout harmed. No Kubernetes, no I/O, no Kopf.
Together with `decisions.should_heal`, `decisions.promotion_action`, `signals.WindowState` and
`signals.trigger_from` this is the whole decision path from traffic to a promoted adapter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from model_handler.drift import DriftScores, HealTrigger, drift_scores
from model_handler.rules import RuleSet
from model_handler.sketches import DriftSketch, ReferenceProfile
from shm_operator.crd import DriftSpec
from shm_operator.decisions import Decision, Promotion, RollbackLimits, RolloutSignals, rollback_check
from shm_operator.job_result import JobResult
from shm_operator.signals import drift_spec_of, trigger_from


def score(window: DriftSketch, reference: ReferenceProfile, rules: RuleSet,
          drift_spec: DriftSpec | Mapping) -> DriftScores:
    """Score a full window; `spec.drift.minSamples` says how many rows make a window evidence."""
    min_samples = drift_spec_of(drift_spec).min_samples
    return drift_scores(window, reference, rules, min_samples=min_samples)


@dataclass(frozen=True)
class WindowJudgement:
    """What one scored window does to the drift state kept in status.drift."""

    trigger: HealTrigger      # thresholds from spec.drift, state updated by this window
    was: bool                 # drift was declared before this window
    drifting: bool            # drift is declared after it
    since: str | None         # status.drift.since: when the current declaration began
    onset: str | None         # a new status.drift.onset (this window began a run of on-windows), else None


def judge_window(scores: DriftScores, drift_spec: DriftSpec | Mapping, saved_trigger: Mapping | None,
                 since: str | None, now: str) -> WindowJudgement:
    """Feed one window to the trigger rebuilt from the spec and the saved state.

    The onset is the time the first of a run of on-windows completed: that window already saw the
    drift, so every row sampled after it is drifted and a heal Job trains on rows since then. Until
    drift is declared, a window in which a signal turns on that was off in the window before moves
    the onset to its own end: the run may have begun with a chance alarm on clean traffic (a label
    signal on 1,000 reference-like rows, say) just before the real drift, and a Job that trained on
    rows since that alarm would mix clean rows into its drifted ones."""
    trigger = trigger_from(drift_spec, dict(saved_trigger) if saved_trigger else None)
    was, before = trigger.drifting, set(trigger.signals)
    drifting = trigger.update(scores)
    since = since if was and drifting else (now if drifting else None)
    began = trigger.consecutive == 1 or bool(set(trigger.signals) - before)
    onset = now if not was and not scores.insufficient and began else None
    return WindowJudgement(trigger, was, drifting, since, onset)


def heal_outcome(action: Promotion, result: JobResult) -> str:
    """status.lastHeal.result of a heal Job that completed without error, given its promotion action
    (the Job's verdict: nothing ends NothingToFix; reject ends Rejected, or NothingToFix where the
    Job stored no rejected candidate)."""
    if action.action == "promote":
        return "Promoted"
    if action.action == "await-approval":
        return "AwaitingApproval"
    if action.action == "nothing":
        return "NothingToFix"
    return "Rejected" if result.state == "rejected" else "NothingToFix"


# ---- the rollback watch ------------------------------------------------------------------------

def baseline(drift: Mapping) -> dict:
    return {"samples": drift.get("samples") or 0, "ruleConflict": drift.get("ruleConflict") or 0.0,
            "classRates": drift.get("classRates") or {}}


def baseline_of(drift: Mapping, version: str | None) -> dict | None:
    """The last drift window as a rollout's baseline, if `version` alone served it. A window from an
    earlier adapter, or one that mixed two during a rollout, would judge the new adapter against
    the wrong thing: the chaos benchmark saw a harmful adapter pass its watch that way."""
    if version is None or drift.get("adapter") != version or not drift.get("samples"):
        return None
    return baseline(drift)


def rollout_verdict(base: Mapping, fresh: Mapping, reference_rates: Mapping[str, float], limits: RollbackLimits,
                    elapsed_seconds: float) -> Decision:
    """Judge one live window (a drift summary) of a rollout against its baseline.

    Harm must show against the window before the rollout, the training data, and the class shares
    the heal's gate certified for this version on held-out rows (`expectedClassRates`): a heal that
    ends a collapse changes class rates a lot, but back towards the training ones, and one that
    learns a new fraud pattern raises the fraud rate on purpose, by as much as its gate saw."""
    pre = RolloutSignals(base.get("samples", 0), base.get("ruleConflict", 0.0), base.get("classRates") or {})
    rates = (fresh.get("classRates") or {}) if pre.class_rates else {}
    live = RolloutSignals(fresh["samples"], fresh["ruleConflict"], rates)
    decision = rollback_check(pre, live, limits, elapsed_seconds)
    if decision.act and reference_rates and rates:
        versus_training = rollback_check(RolloutSignals(pre.samples, pre.rule_conflict, reference_rates), live,
                                         limits, elapsed_seconds)
        if not versus_training.act:
            decision = versus_training
    expected = base.get("expectedClassRates") or {}
    if decision.act and expected and rates:
        versus_expected = rollback_check(RolloutSignals(pre.samples, pre.rule_conflict, expected), live,
                                         limits, elapsed_seconds)
        if not versus_expected.act:
            decision = versus_expected
    return decision


def vouched(watched_rows: int, limits: RollbackLimits) -> bool:
    """A watch that ended without harm makes its version the last good one only if live traffic
    (at least rollback.minSamples rows) was judged: time alone proves nothing."""
    return watched_rows >= limits.min_samples
