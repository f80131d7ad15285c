"""The chart's alerts and dashboard against a real Prometheus (Debian's `prometheus` package, 2.42,
installed by `make prometheus`) scraping a running sandbox: the real operator process and a real
TorchServe model pod serving traffic.

The scrape configuration is the one prometheus-operator would generate from the chart's rendered
ServiceMonitor (honorLabels) and PodMonitor (its port and relabelings), with static targets in place
of Kubernetes service discovery (no prometheus-operator here): the pod's `__meta_kubernetes_pod_label_*`
labels are given as they would be discovered, and the PodMonitor's own relabelings turn them into
`model`. The rules are the rendered PrometheusRule's, checked by `promtool check rules` and loaded
into the Prometheus.

Then: every PromQL expression of the Grafana dashboard (template variables set to this model) and
every metric selector of every alert returns at least one series, each whole alert expression
evaluates, and Prometheus reports every rule healthy. A heal takes minutes, so the label-free
accuracy estimate a finished heal writes to status.performance is patched in, as a heal writes it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from examples.fraud.generator import World, labelled_rows
from sandbox.env import free_port
from sandbox.server import stop_process
from sandbox.loadgen import LoadLoop
from sandbox_helpers import REPO_ROOT, wait_until
from test_heal_loop import service_url, wait_status
from test_reconcile import example_cr

pytestmark = [pytest.mark.timeout(300)]

CHART = REPO_ROOT / "charts" / "selfheal"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
FAST = {"replicas": 1, "serving": {"workers": 1, "sampleFraction": 0.1},
        "drift": {"windowRows": 200, "minSamples": 100, "checkIntervalSeconds": 2}}
SELECTOR = re.compile(r"\bselfheal_[a-z_]+(?:\{[^}]*\})?")


@pytest.fixture(scope="module")
def prometheus_bins() -> tuple[str, str]:
    found = shutil.which("prometheus"), shutil.which("promtool")
    if not all(found):
        if os.geteuid() == 0:
            pytest.fail("prometheus/promtool are missing: `make prometheus` installs them (make test does)")
        pytest.skip("prometheus/promtool are missing and installing them needs root (`make prometheus`)")
    return found


def rendered(helm: str) -> list[dict]:
    out = subprocess.run([helm, "template", "shm", str(CHART), "--namespace", "selfheal-system",
                          "--set", "prometheusRule.enabled=true", "--set", "metrics.podMonitor.enabled=true",
                          "--set", "metrics.serviceMonitor.enabled=true"],
                         capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def of_kind(docs: list[dict], kind: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def relabel_configs(relabelings: list[dict]) -> list[dict]:
    """prometheus-operator's RelabelConfig (camelCase) as Prometheus's relabel_configs."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label", "separator": "separator",
             "regex": "regex", "replacement": "replacement", "action": "action", "modulus": "modulus"}
    return [{names[k]: v for k, v in r.items()} for r in relabelings]


def pod_meta_labels(pod: dict) -> dict[str, str]:
    """What Kubernetes service discovery would give for the pod (the labels relabelings may use)."""
    meta = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v
            for k, v in pod["metadata"].get("labels", {}).items()}
    return {**meta, "namespace": pod["metadata"]["namespace"], "pod": pod["metadata"]["name"]}


def container_port(pod: dict, name: str) -> int:
    return next(p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", []) if p["name"] == name)


class Prometheus:
    def __init__(self, binary: str, workdir: Path, config: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.log_path = workdir / "prometheus.log"

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log_path.read_text(errors='replace')}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        wait_until(ready, timeout=timeout, interval=0.3, what="prometheus to be ready")

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:   # a bad query is a 400 with the error in the body
            return json.loads(err.read())

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
        self.log.close()


def dashboard_queries(namespace: str, model: str) -> dict[str, str]:
    """Every PromQL expression of the dashboard, with its template variables set to one model;
    a variable's `label_values(selector, label)` is the series of its selector."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"])
            assert match, f"variable {variable['name']}: unexpected query {variable['query']}"
            queries[f"variable ${variable['name']}"] = match.group(1)
    values = {"namespace": namespace, "model": model}
    return {where: re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr) for where, expr in queries.items()}


def test_alerts_and_dashboard_queries_return_series_from_a_real_prometheus(
        sandbox, namespace, operator, model_dir, tmp_path, prometheus_bins):
    prometheus_bin, promtool = prometheus_bins
    started = time.monotonic()
    docs = rendered(sandbox.helm_bin)
    rule = of_kind(docs, "PrometheusRule")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    check = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert f"SUCCESS: {len(rules)} rules found" in check.stdout

    storage = tmp_path / "storage"
    storage.mkdir()
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=example_cr(model_dir, storage, **FAST))
    wait_status(sandbox, namespace, lambda s: (s.get("adapter") or {}).get("ready") == "1/1", 150,
                "1 ready pod serving base", operator)
    url = service_url(sandbox, namespace)
    loop = LoadLoop(url, labelled_rows(World(), 3), clients=2, max_seconds=120).start()
    request = urllib.request.Request(url, data=b'{"amount": "lots"}', headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:   # one rejected request for its counter
        urllib.request.urlopen(request, timeout=10)
    assert 400 <= refused.value.code < 500
    # what a finished heal writes (decisions.performance), for the accuracy gauge
    sandbox.kubectl("patch", "shm", "fraud", "-n", namespace, "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"performance": {"estimator": "em_prior", "accuracy": 0.93,
                                                           "basis": "served before heal fraud-heal-1",
                                                           "display": "0.93"}}}))

    [pod] = sandbox.get("pods", "-n", namespace, "-l", "selfheal.io/component=serving")["items"]
    monitor, service_monitor = of_kind(docs, "PodMonitor"), of_kind(docs, "ServiceMonitor")
    [pod_endpoint], [operator_endpoint] = monitor["spec"]["podMetricsEndpoints"], service_monitor["spec"]["endpoints"]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_file)],
        "scrape_configs": [
            {"job_name": "selfheal-operator", "honor_labels": operator_endpoint["honorLabels"],
             "metrics_path": operator_endpoint["path"],
             "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"],
                                 "labels": {"namespace": "selfheal-system", "pod": "selfheal-operator"}}]},
            {"job_name": "selfheal-models", "honor_labels": pod_endpoint.get("honorLabels", False),
             "metrics_path": pod_endpoint["path"],
             "static_configs": [{"targets": [f"{pod['status']['podIP']}:{container_port(pod, pod_endpoint['port'])}"],
                                 "labels": pod_meta_labels(pod)}],
             "relabel_configs": relabel_configs(pod_endpoint.get("relabelings", []))},
        ]}
    prometheus = Prometheus(prometheus_bin, tmp_path, config)
    try:
        prometheus.wait_ready()
        queries = dashboard_queries(namespace, "fraud")
        for r in rules:   # each metric selector of an alert, and the whole expression
            for i, selector in enumerate(SELECTOR.findall(r["expr"])):
                queries[f"alert {r['alert']} selector {i}"] = selector
        rule_exprs = {f"alert {r['alert']}": r["expr"] for r in rules}

        def failures() -> dict[str, str]:
            bad = {}
            for where, expr in {**queries, **rule_exprs}.items():
                answer = prometheus.query(expr)
                if answer.get("status") != "success":
                    bad[where] = f"{expr}: {answer.get('error')}"
                elif where in queries and not answer["data"]["result"]:
                    bad[where] = f"{expr}: no series"
            loaded = prometheus.api("rules").get("data", {}).get("groups", [])
            health = {r["name"]: r.get("health") for g in loaded for r in g["rules"]}
            if len(health) != len(rules) or set(health.values()) != {"ok"}:
                bad["rules"] = f"rules loaded by Prometheus: {health}"
            return bad

        try:
            wait_until(lambda: not failures(), timeout=90, interval=2.0, what="every query to return series")
        except AssertionError:
            targets = prometheus.api("targets").get("data", {}).get("activeTargets", [])
            raise AssertionError(json.dumps(failures(), indent=1) + "\ntargets: " + json.dumps(
                [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]) + "\nprometheus log:\n" +
                prometheus.log_path.read_text(errors="replace")[-2000:]) from None
        # The operator and the model pods both export selfheal_input_shift and selfheal_rule_conflict:
        # no selector of the dashboard may mix the operator's merged series with the pods' own.
        mixed = {}
        for where, expr in dashboard_queries(namespace, "fraud").items():
            for selector in SELECTOR.findall(expr):
                jobs = {s["metric"]["job"] for s in prometheus.query(selector)["data"]["result"]}
                if len(jobs) != 1:
                    mixed[f"{where}: {selector}"] = sorted(jobs)
        assert not mixed, mixed
        # the model's namespace, not the operator's (honorLabels), and the pod's series carry `model`
        assert prometheus.query(f'selfheal_drift_score{{namespace="{namespace}", model="fraud"}}')["data"]["result"]
        assert prometheus.query(f'selfheal_rows_total{{namespace="{namespace}", model="fraud"}}')["data"]["result"]
        accuracy = prometheus.query(f'selfheal_estimated_accuracy{{namespace="{namespace}"}}')["data"]["result"]
        assert [float(s["value"][1]) for s in accuracy] == [0.93]
        assert all(s["metric"]["job"] == "selfheal-models" for s in prometheus.query(
            f'selfheal_input_shift{{namespace="{namespace}", ModelName!=""}}')["data"]["result"])
    finally:
        prometheus.stop()
        loop.stop()
    print(f"\n[prometheus] {len(queries)} queries and {len(rules)} alerts checked in "
          f"{time.monotonic() - started:.0f}s")
