"""Prometheus metrics of the operator: heals by result, rollbacks, drift per model, errors."""
from __future__ import annotations

import contextlib
import functools

from prometheus_client import Counter, Gauge

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
RULE_CONFLICT = Gauge("selfheal_rule_conflict", "Trust-weighted excess rule conflict of the last window",
                      ["namespace", "model"])


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


def count_errors(handler):
    """Count a Kopf handler's failed passes in RECONCILE_ERRORS, then let Kopf handle the error.
    `functools.wraps` keeps the handler's name, which Kopf uses as its id in progress storage."""
    @functools.wraps(handler)
    async def counted(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except Exception as err:
            if not getattr(err, "waiting", False):   # a planned wait (rollout.WaitingForBaseline) is no error
                RECONCILE_ERRORS.labels(kwargs.get("namespace") or "", kwargs.get("name") or "",
                                        handler.__name__).inc()
            raise
    return counted
