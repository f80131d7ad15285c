"""The operator's reconcile-error counter: a handler pass that raises is counted under the
handler's own name (Kopf's handler id, kept by the wrapper), then re-raised for Kopf to retry."""
from __future__ import annotations

import asyncio

import kopf
import pytest
from prometheus_client import REGISTRY, generate_latest

from shm_operator import metrics


def errors(handler: str) -> float:
    return REGISTRY.get_sample_value("selfheal_reconcile_errors_total",
                                     {"namespace": "ns", "model": "m", "handler": handler}) or 0.0


def test_a_failing_handler_pass_is_counted_and_re_raised():
    calls = []

    @metrics.count_errors
    async def flaky(name, namespace, **_):
        calls.append(name)
        if len(calls) == 1:
            raise kopf.TemporaryError("registry unreachable", delay=10)
        return "done"

    assert flaky.__name__ == "flaky"   # Kopf's handler id stays the function's name
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(flaky(name="m", namespace="ns"))
    assert errors("flaky") == 1.0
    assert asyncio.run(flaky(name="m", namespace="ns")) == "done"
    assert errors("flaky") == 1.0   # a pass that succeeds counts nothing


def test_a_pass_cut_by_the_operator_shutdown_is_no_error(monkeypatch):
    # Kopf may still run a timer after the cleanup closed the shared API client: aiohttp then fails
    # with an AssertionError, which was logged as a crash (and failed the S3 end-to-end test in CI).
    from shm_operator import k8s

    @metrics.count_errors
    async def tick(name, namespace, **_):
        raise AssertionError("session closed")

    with pytest.raises(AssertionError):
        asyncio.run(tick(name="m", namespace="ns"))
    assert errors("tick") == 1.0
    monkeypatch.setattr(k8s, "_stopping", False)   # restored after the test
    asyncio.run(k8s.close())
    assert k8s.stopping()
    assert asyncio.run(tick(name="m", namespace="ns")) is None
    assert errors("tick") == 1.0


def test_the_operator_handlers_are_counted():
    from shm_operator import monitor, reconcile
    assert reconcile.reconcile.__wrapped__.__name__ == "reconcile"
    assert monitor.tick.__wrapped__.__name__ == "tick"


def test_every_operator_gauge_is_on_the_chart_dashboard():
    """A gauge nobody can see is no use: each one the operator exports has a panel."""
    import json
    from pathlib import Path

    from prometheus_client import Gauge

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "charts" / "selfheal" / "files" /
                            "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    gauges = [m._name for m in vars(metrics).values() if isinstance(m, Gauge)]
    assert "selfheal_estimated_accuracy" in gauges
    assert [g for g in gauges if g not in exprs] == []


def test_an_unknown_estimate_removes_the_series():
    from prometheus_client import REGISTRY

    metrics.observe_performance("ns", "est", 0.91)
    assert REGISTRY.get_sample_value("selfheal_estimated_accuracy", {"namespace": "ns", "model": "est"}) == 0.91
    metrics.observe_performance("ns", "est", None)
    assert REGISTRY.get_sample_value("selfheal_estimated_accuracy", {"namespace": "ns", "model": "est"}) is None
    metrics.observe_performance("ns", "est", None)   # unknown twice is fine


def value(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_model_status_is_exported_and_its_counters_start_at_zero():
    """Counters exist at 0 from the first sight of a model (else `increase()` misses the first heal
    failure an alert is for); conditions follow the status; drift and accuracy survive a restart."""
    ns, model = "ns-status", "m1"
    status = {"conditions": [{"type": "Degraded", "status": "True", "reason": "PodsUnreachable"},
                             {"type": "Ready", "status": "False", "reason": "InvalidSpec"}],
              "drift": {"score": 1.5, "inputShift": 0.4, "labelShift": 0.1, "ruleConflict": 0.02},
              "performance": {"accuracy": 0.8}}
    metrics.observe_status(ns, model, status)
    assert value("selfheal_heals_finished_total", namespace=ns, model=model, result="Failed") == 0.0
    assert value("selfheal_heals_started_total", namespace=ns, model=model) == 0.0
    assert value("selfheal_rollbacks_total", namespace=ns, model=model, kind="automatic") == 0.0
    assert value("selfheal_reconcile_errors_total", namespace=ns, model=model, handler="tick") == 0.0
    assert value("selfheal_condition", namespace=ns, model=model, condition="Degraded", status="True") == 1.0
    assert value("selfheal_condition", namespace=ns, model=model, condition="Degraded", status="False") == 0.0
    assert value("selfheal_condition", namespace=ns, model=model, condition="Ready", status="False") == 1.0
    assert value("selfheal_drift_score", namespace=ns, model=model) == 1.5
    assert value("selfheal_estimated_accuracy", namespace=ns, model=model) == 0.8

    assert value("selfheal_condition", namespace=ns, model=model, condition="Healing", status="Unknown") == 1.0
    assert value("selfheal_condition", namespace=ns, model=model, condition="Healing", status="True") == 0.0

    # Degraded ends, Ready is no longer in the status (Unknown), a newer operator's type comes and goes
    metrics.observe_status(ns, model, {"conditions": [{"type": "Degraded", "status": "False"},
                                                      {"type": "PodsScheduled", "status": "True"}]})
    assert value("selfheal_condition", namespace=ns, model=model, condition="Degraded", status="True") == 0.0
    assert value("selfheal_condition", namespace=ns, model=model, condition="Ready", status="False") == 0.0
    assert value("selfheal_condition", namespace=ns, model=model, condition="Ready", status="Unknown") == 1.0
    assert value("selfheal_condition", namespace=ns, model=model, condition="PodsScheduled", status="True") == 1.0
    metrics.observe_status(ns, model, {})
    assert value("selfheal_condition", namespace=ns, model=model, condition="PodsScheduled", status="True") is None
    assert value("selfheal_drift_score", namespace=ns, model=model) == 1.5   # no window since: the last one stays

    metrics.HEALS_FINISHED.labels(ns, model, "Failed").inc()
    metrics.observe_status(ns, model, {})   # seeing the model again resets nothing
    assert value("selfheal_heals_finished_total", namespace=ns, model=model, result="Failed") == 1.0


def test_a_deleted_model_leaves_no_series_behind():
    metrics.observe_status("ns-gone", "m", {"conditions": [{"type": "Degraded", "status": "True"}],
                                            "drift": {"score": 2.0, "inputShift": 1.0, "labelShift": 0.0,
                                                      "ruleConflict": 0.0}})
    metrics.observe_status("ns-gone", "other", {})
    metrics.forget_model("ns-gone", "m")
    text = generate_latest(REGISTRY).decode()
    assert 'model="m",namespace="ns-gone"' not in text
    assert 'model="other",namespace="ns-gone"' in text


def test_a_condition_gone_from_one_model_stays_for_another():
    """Each model's exported condition types are its own: one model dropping a type removes only its
    own series (the lookup is per model, not a scan of every model's)."""
    ns = "ns-two"
    for model in ("a", "b"):
        metrics.observe_status(ns, model, {"conditions": [{"type": "PodsScheduled", "status": "True"}]})
    metrics.observe_status(ns, "a", {})
    assert value("selfheal_condition", namespace=ns, model="a", condition="PodsScheduled", status="True") is None
    assert value("selfheal_condition", namespace=ns, model="b", condition="PodsScheduled", status="True") == 1.0
    metrics.forget_model(ns, "b")
    metrics.observe_status(ns, "b", {})   # seen again after a delete: starts from nothing exported
    assert value("selfheal_condition", namespace=ns, model="b", condition="PodsScheduled", status="True") is None
    assert value("selfheal_condition", namespace=ns, model="b", condition="Ready", status="Unknown") == 1.0
