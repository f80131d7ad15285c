"""Prometheus metrics of the operator: heals by result, rollbacks, drift per model, errors, and the
status conditions of every model.

Alerts (the chart's PrometheusRule) are built on these names. A counter series that appears only at
its first increment would hide that first increment from `increase()`, so every model's counters
start at 0 as soon as the operator sees the model (`observe_status`); a deleted model's series go
(`forget_model`), so no alert keeps firing for a model that no longer exists."""
from __future__ import annotations

import contextlib
import functools
import logging

from prometheus_client import Counter, Gauge

from shm_operator.crd import ConditionType

HEALS_STARTED = Counter("selfheal_heals_started_total", "Healing Jobs launched", ["namespace", "model"])
HEALS_FINISHED = Counter("selfheal_heals_finished_total", "Healing Jobs finished, by result",
                         ["namespace", "model", "result"])
ROLLBACKS = Counter("selfheal_rollbacks_total", "Adapter rollbacks", ["namespace", "model", "kind"])
ADAPTER_CHANGES = Counter("selfheal_adapter_changes_total", "spec.adapter.version changes rolled out",
                          ["namespace", "model", "by"])
DRIFT_SCORE = Gauge("selfheal_drift_score", "Strongest drift signal over its on threshold (>= 1: one reached it)",
                    ["namespace", "model"])
INPUT_SHIFT = Gauge("selfheal_input_shift", "Largest per-feature PSI of the last window", ["namespace", "model"])
LABEL_SHIFT = Gauge("selfheal_label_shift", "Max over classes of |log(estimated / training class prior)| of the "
                    "last window", ["namespace", "model"])
RECONCILE_ERRORS = Counter("selfheal_reconcile_errors_total",
                           "Handler passes that raised (Kopf retries them), by handler",
                           ["namespace", "model", "handler"])
ESTIMATED_ACCURACY = Gauge("selfheal_estimated_accuracy",
                           "Label-free estimate of the served model's accuracy, from the last heal that gave one "
                           "(status.performance); absent while unknown", ["namespace", "model"])
CONDITION = Gauge("selfheal_condition", "1 for the status (True, False, Unknown) each condition of the model "
                  "has now, 0 for the other two", ["namespace", "model", "condition", "status"])
RULE_CONFLICT = Gauge("selfheal_rule_conflict", "Trust-weighted excess rule conflict of the last window",
                      ["namespace", "model"])


# The values a counter's extra label can take, each started at 0 for every model.
HEAL_RESULTS = ("Promoted", "AwaitingApproval", "NothingToFix", "Rejected", "Failed")
ROLLBACK_KINDS = ("automatic",)
CONDITION_STATUSES = ("True", "False", "Unknown")
COUNTED_HANDLERS: list[str] = []   # the handlers wrapped by count_errors, by name
PER_MODEL = (HEALS_STARTED, HEALS_FINISHED, ROLLBACKS, ADAPTER_CHANGES, DRIFT_SCORE, INPUT_SHIFT, LABEL_SHIFT,
             RECONCILE_ERRORS, ESTIMATED_ACCURACY, CONDITION, RULE_CONFLICT)
DRIFT_KEYS = ("score", "inputShift", "labelShift", "ruleConflict")
# The condition types exported per (namespace, model): every status change is observed, and finding
# a model's series among every model's (`_series`) made each observation cost O(models).
EXPORTED_CONDITIONS: dict[tuple[str, str], set[str]] = {}


def observe_drift(namespace: str, model: str, summary: dict) -> None:
    DRIFT_SCORE.labels(namespace, model).set(summary["score"])
    INPUT_SHIFT.labels(namespace, model).set(summary["inputShift"])
    LABEL_SHIFT.labels(namespace, model).set(summary["labelShift"])
    RULE_CONFLICT.labels(namespace, model).set(summary["ruleConflict"])


def observe_performance(namespace: str, model: str, accuracy: float | None) -> None:
    if accuracy is None:    # unknown is no number: the series ends instead of showing a stale one
        with contextlib.suppress(KeyError):
            ESTIMATED_ACCURACY.remove(namespace, model)
    else:
        ESTIMATED_ACCURACY.labels(namespace, model).set(accuracy)


def observe_status(namespace: str, model: str, status: dict | None) -> None:
    """Export what the model's status says now: its conditions, and the last drift window's scores
    and the label-free accuracy estimate (so both survive an operator restart). Starts the
    model's counters at 0."""
    status = status or {}
    start_counters(namespace, model)
    drift = status.get("drift") or {}
    if all(isinstance(drift.get(k), (int, float)) for k in DRIFT_KEYS):
        observe_drift(namespace, model, drift)
    accuracy = (status.get("performance") or {}).get("accuracy")
    if isinstance(accuracy, (int, float)):
        observe_performance(namespace, model, accuracy)
    # Every type the operator writes, Unknown while the status lacks it (as in Kubernetes), so an
    # alert's selector matches from the start; a type only a newer operator writes, while present.
    has = {c["type"]: c.get("status") for c in status.get("conditions") or [] if c.get("type")}
    wanted = {}
    for type_ in dict.fromkeys([*(t.value for t in ConditionType), *has]):
        for value in CONDITION_STATUSES:
            wanted[(type_, value)] = 1.0 if has.get(type_, "Unknown") == value else 0.0
    types = {type_ for type_, _ in wanted}
    for type_ in EXPORTED_CONDITIONS.get((namespace, model), set()) - types:   # one the status no longer has
        for value in CONDITION_STATUSES:
            with contextlib.suppress(KeyError):
                CONDITION.remove(namespace, model, type_, value)
    EXPORTED_CONDITIONS[(namespace, model)] = types
    for (type_, value), number in wanted.items():
        CONDITION.labels(namespace, model, type_, value).set(number)


def start_counters(namespace: str, model: str) -> None:
    HEALS_STARTED.labels(namespace, model)
    for result in HEAL_RESULTS:
        HEALS_FINISHED.labels(namespace, model, result)
    for kind in ROLLBACK_KINDS:
        ROLLBACKS.labels(namespace, model, kind)
    for handler in COUNTED_HANDLERS:
        RECONCILE_ERRORS.labels(namespace, model, handler)


def forget_model(namespace: str, model: str) -> None:
    """Remove every series of a deleted model."""
    EXPORTED_CONDITIONS.pop((namespace, model), None)
    for metric in PER_MODEL:
        for labels in _series(metric, namespace, model):
            with contextlib.suppress(KeyError):
                metric.remove(*labels.values())   # a sample's labels come in the metric's label order


def _series(metric, namespace: str, model: str) -> list[dict]:
    """The label sets of the metric's series for one model (from its public `collect()`)."""
    found = {tuple(sorted(s.labels.items())): s.labels for family in metric.collect() for s in family.samples
             if s.labels.get("namespace") == namespace and s.labels.get("model") == model}
    return list(found.values())


def count_errors(handler):
    """Count a Kopf handler's failed passes in RECONCILE_ERRORS, then let Kopf handle the error.
    `functools.wraps` keeps the handler's name, which Kopf uses as its id in progress storage."""
    COUNTED_HANDLERS.append(handler.__name__)

    @functools.wraps(handler)
    async def counted(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except Exception as err:
            from shm_operator import k8s
            if k8s.stopping():   # the shutdown closed the API client under a pass still running
                logging.getLogger(__name__).info("%s stopped by the operator's shutdown: %s", handler.__name__,
                                                 type(err).__name__)
                return None
            if not getattr(err, "waiting", False):   # a planned wait (rollout.WaitingForBaseline) is no error
                RECONCILE_ERRORS.labels(kwargs.get("namespace") or "", kwargs.get("name") or "",
                                        handler.__name__).inc()
            raise
    return counted
