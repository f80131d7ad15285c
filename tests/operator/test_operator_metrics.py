"""The operator's reconcile-error counter: a handler pass that raises is counted under the
handler's own name (Kopf's handler id, kept by the wrapper), then re-raised for Kopf to retry."""
from __future__ import annotations

import asyncio

import kopf
import pytest
from prometheus_client import REGISTRY

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
