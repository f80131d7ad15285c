"""The chart's monitoring pieces, rendered by the real helm: the opt-in PrometheusRule and the
PodMonitor for the model pods, honorLabels on the operator's ServiceMonitor, and the values schema
as a subchart's (it must accept `global`). tests/operator/test_prometheus.py runs the same rules and
the dashboard's queries against a real Prometheus."""
from __future__ import annotations

import re
import shutil

import pytest
import yaml
from prometheus_client import Counter, Gauge

from shm_operator import metrics
from shm_operator.children import COMPONENT_LABEL, MODEL_LABEL, PORTS, labels as child_labels
from test_chart import CHART, MODES, helm, only, run, template  # noqa: F401  (helm is a fixture)

MONITORING = ("--set", "prometheusRule.enabled=true", "--set", "metrics.podMonitor.enabled=true",
              "--set", "metrics.serviceMonitor.enabled=true")
ALERTS = {"SelfHealHealFailed", "SelfHealRolledBack", "SelfHealDegraded", "SelfHealDriftUnhealed",
          "SelfHealReconcileErrors"}


def operator_metric_names() -> set[str]:
    """What the operator exports, as PromQL names them (a counter's samples end in _total)."""
    return {f"{m._name}_total" if isinstance(m, Counter) else m._name
            for m in vars(metrics).values() if isinstance(m, (Counter, Gauge))}


@pytest.mark.parametrize("mode", MODES)
def test_helm_lint_strict_with_the_monitoring_opt_ins(helm, mode):
    result = run([helm, "lint", "--strict", str(CHART), *MODES[mode], *MONITORING])
    assert "0 chart(s) failed" in result.stdout


def test_monitoring_is_opt_in(helm):
    kinds = {d["kind"] for d in template(helm)}
    assert not kinds & {"PrometheusRule", "PodMonitor", "ServiceMonitor"}


def test_the_prometheus_rule_alerts_on_what_the_operator_exports(helm):
    rule = only(template(helm, *MONITORING, "--set", "prometheusRule.ruleLabels.team=ml",
                         "--set", "prometheusRule.labels.release=kube-prometheus-stack",
                         "--set", "prometheusRule.degradedFor=7m"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    by_name = {r["alert"]: r for r in rules}
    assert by_name["SelfHealDegraded"]["for"] == "7m"
    assert 'condition="Degraded"' in by_name["SelfHealDegraded"]["expr"]
    exported = operator_metric_names()
    assert {"selfheal_condition", "selfheal_heals_finished_total", "selfheal_rollbacks_total",
            "selfheal_reconcile_errors_total"} <= exported
    for r in rules:
        assert r["labels"]["team"] == "ml" and r["labels"]["severity"] in ("warning", "critical")
        used = set(re.findall(r"selfheal_[a-z_]+", r["expr"]))
        assert used and used <= exported, f"{r['alert']} uses metrics the operator does not export: {used - exported}"
        # Alertmanager templates survive helm's own templating
        assert "{{ $labels.namespace }}/{{ $labels.model }}" in r["annotations"]["description"]


def test_the_pod_monitor_selects_the_serving_pods_the_operator_creates(helm):
    pod_labels = child_labels("fraud", "serving")
    for mode, namespaces in (("cluster", None), ("namespaced", ["models-a", "models-b"])):
        monitor = only(template(helm, *MODES[mode], *MONITORING), "PodMonitor")
        spec = monitor["spec"]
        assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
        assert spec["selector"]["matchLabels"][COMPONENT_LABEL] == "serving"
        assert spec["namespaceSelector"] == ({"any": True} if namespaces is None else {"matchNames": namespaces})
        [endpoint] = spec["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics" and "metrics" in PORTS
        # selfheal.io/model -> model, the label the operator's own series use
        meta = "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", MODEL_LABEL)
        assert {"sourceLabels": [meta], "targetLabel": "model"} in endpoint["relabelings"]
    # a heal Job's pods are no serving pods
    assert not spec["selector"]["matchLabels"].items() <= child_labels("fraud", "heal").items()


def test_the_service_monitor_keeps_the_operator_namespace_label(helm):
    monitor = only(template(helm, *MONITORING), "ServiceMonitor")
    assert [e["honorLabels"] for e in monitor["spec"]["endpoints"]] == [True]


@pytest.mark.parametrize(("args", "named"), [
    (("--set", "prometheusRule.window=soon"), "/prometheusRule/window"),
    (("--set", "prometheusRule.reconcileErrors=-1"), "/prometheusRule/reconcileErrors"),
    (("--set", "metrics.podMonitor.interval=often"), "/metrics/podMonitor/interval"),
    (("--set", "prometheusRule.alerts=all"), "alerts"),
])
def test_values_schema_rejects_bad_monitoring_values(helm, args, named):
    result = run([helm, "template", "shm", str(CHART), *args], check=False)
    assert result.returncode != 0, f"helm template accepted {args}"
    assert named in result.stderr, result.stderr


def test_the_chart_works_as_a_subchart_with_global_values(helm, tmp_path):
    """A parent chart passes `global` to every subchart; the schema must not refuse it."""
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "selfheal")
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "selfheal", "version": yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]}]}))
    (parent / "values.yaml").write_text(yaml.safe_dump({
        "global": {"imageRegistry": "registry.example.com", "storageClass": "fast"},
        "selfheal": {"prometheusRule": {"enabled": True}}}))
    out = run([helm, "template", "platform", str(parent), "--namespace", "platform"]).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    assert {"Deployment", "PrometheusRule"} <= kinds
    # and the same schema still refuses what it should, inside the parent
    (parent / "values.yaml").write_text(yaml.safe_dump({"selfheal": {"logLevel": "loud"}}))
    result = run([helm, "template", "platform", str(parent)], check=False)
    assert result.returncode != 0 and "logLevel" in result.stderr
