"""Security defaults, checked offline on what the project really renders (docs/security.md).

Every pod the project defines (the operator's Deployment from `helm template`, the serving Deployment
and the healing Job from shm_operator.children) is hardened and validates against the Kubernetes
schemas; the per-model NetworkPolicy, built from the settings the chart gives the operator, admits the
operator's own pods to the management port and nobody else; storage credentials are redacted from
messages and logs and never passed as arguments.
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from model_handler.redact import redact
from model_handler.registry import AdapterRegistry, RegistryError
from sandbox import tools
from shm_operator import children, network_policy
from shm_operator.crd import SelfHealingModelSpec
from shm_operator.status import full_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "charts" / "selfheal"
EXAMPLE_CR = REPO_ROOT / "examples" / "fraud" / "selfhealingmodel.yaml"
KUBERNETES_VERSION = "1.37.0"
SECRET = "TOPSECRET123"
CREDENTIAL_URI = f"s3://AKIAEXAMPLEKEY:{SECRET}@bucket/selfheal?token=TOKEN{SECRET}"


@pytest.fixture(scope="module")
def helm(tmp_path_factory) -> str:
    try:
        return str(tools.install(tmp_path_factory.mktemp("bin"))["helm"])
    except tools.ToolsError as exc:
        pytest.skip(f"helm could not be provided: {exc}")


def template(helm: str, *args: str) -> list[dict]:
    out = subprocess.run([helm, "template", "shm", str(CHART), "--namespace", "selfheal-system", *args],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def example_spec(**overrides) -> dict:
    spec = yaml.safe_load(EXAMPLE_CR.read_text())["spec"]
    spec.update(overrides)
    return full_spec(spec)


def project_pods(helm: str) -> dict[str, dict]:
    """Every pod template the project defines, by where it comes from."""
    spec = example_spec()
    hot = example_spec(promotion={"strategy": "HotSwap"})
    s3 = example_spec(model={"archive": "s3://models/fraud"}, storage={"uri": "s3://b/p", "secretName": "creds"})
    config = SelfHealingModelSpec.model_validate(spec).heal_job_config()
    operator = next(d for d in template(helm) if d["kind"] == "Deployment")
    return {
        "chart operator Deployment": operator,
        "serving Deployment": children.deployment("fraud", "models", spec, "base"),
        "serving Deployment (HotSwap)": children.deployment("fraud", "models", hot, "base"),
        "healing Job": children.heal_job("fraud", "models", spec, job_name="fraud-heal-1", parent="base", version="v1", config=config),
        # an s3:// archive: the storage-initializer init container is hardened the same way
        "serving Deployment (s3 archive)": children.deployment("fraud", "models", s3, "base"),
        "healing Job (s3 archive)": children.heal_job("fraud", "models", s3, job_name="fraud-heal-1", parent="base", version="v1", config=config),
    }


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def test_every_pod_is_hardened_and_valid(helm):
    """Non-root with a fixed UID, read-only root, no capabilities, no escalation, RuntimeDefault
    seccomp in every pod; no API token where the API is not used; valid for the real schemas."""
    for where, obj in project_pods(helm).items():
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        pod = pod_spec(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] == 10001, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False and sc.get("privileged") is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]} and "add" not in sc["capabilities"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        needs_api = where.startswith("chart operator")
        assert pod["automountServiceAccountToken"] is needs_api, where
        assert "hostNetwork" not in pod and "hostPID" not in pod and "hostPath" not in json.dumps(pod), where


def test_writers_point_at_writable_mounts():
    """Under a read-only root every place TorchServe, Java and Python write (TMPDIR, TEMP, HOME,
    caches) must be an emptyDir mount, in the serving pods and in the healing Job."""
    spec = example_spec()
    config = SelfHealingModelSpec.model_validate(spec).heal_job_config()
    for obj in (children.deployment("fraud", "models", spec, "base"),
                children.heal_job("fraud", "models", spec, job_name="fraud-heal-1", parent="base", version="v1", config=config)):
        pod = pod_spec(obj)
        (container,) = pod["containers"]
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs]
        env = {e["name"]: e.get("value") for e in container["env"]}
        for var in ("TMPDIR", "TEMP", "TMP", "HOME", "XDG_CACHE_HOME"):
            assert any(env[var] == path or env[var].startswith(path + "/") for path in writable), (var, env[var])
        assert env["PYTHONDONTWRITEBYTECODE"] == "1"
        # the launcher's per-instance dir under TMPDIR keeps worker socket paths short (< 108 bytes)
        assert len(env["TMPDIR"]) + len("/torchserve-xxxxxxxx/tmp/.ts.sock.9000") < 100


def test_images_run_as_the_uid_the_pods_ask_for():
    for dockerfile in ("operator.Dockerfile", "model-server.Dockerfile"):
        text = (REPO_ROOT / "docker" / dockerfile).read_text()
        assert re.search(r"^USER (\d+):(\d+)$", text, re.M).groups() == (
            str(children.RUN_AS_USER), str(children.RUN_AS_GROUP)), dockerfile


def test_storage_credentials_are_never_arguments():
    """A URI with credentials reaches pods and Jobs only as an env var (not in args, so not in `ps`
    or `kubectl describe`'s command line); a named Secret comes in through envFrom."""
    spec = example_spec(storage={"uri": CREDENTIAL_URI, "secretName": "s3-creds"})
    config = SelfHealingModelSpec.model_validate(spec).heal_job_config()
    for obj in (children.deployment("fraud", "models", spec, "base"),
                children.heal_job("fraud", "models", spec, job_name="fraud-heal-1", parent="base", version="v1", config=config)):
        (container,) = pod_spec(obj)["containers"]
        assert SECRET not in json.dumps(container["args"]) and "--storage-uri" not in container["args"]
        assert {"name": "SELFHEAL_STORAGE_URI", "value": CREDENTIAL_URI} in container["env"]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    (container,) = pod_spec(children.deployment("fraud", "models", example_spec(), "base"))["containers"]
    assert "envFrom" not in container


def network_policy_from_chart(helm: str, *values: str) -> tuple[dict, list[dict]]:
    docs = template(helm, *values)
    operator = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in pod_spec(operator)["containers"][0]["env"]}
    settings = network_policy.network_policy_settings({network_policy.NETWORK_POLICY_ENV: env["SELFHEAL_NETWORK_POLICY"]})
    return network_policy.network_policy("fraud", settings), docs


def selector_matches(selector: dict, labels: dict) -> bool:
    """A metav1.LabelSelector against labels (an empty selector matches everything)."""
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values") or []
        if not {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
                "Exists": key in labels, "DoesNotExist": key not in labels}[op]:
            return False
    return True


def peer_admits(peer: dict, pod_labels: dict, namespace_labels: dict) -> bool:
    return (selector_matches(peer.get("podSelector", {}), pod_labels)
            and selector_matches(peer.get("namespaceSelector", {}), namespace_labels))


def test_model_network_policy_admits_only_the_operator_to_management(helm):
    """The operator's per-model policy, built from the settings the chart renders: it selects the
    serving pods; management admits this release's operator pods in its namespace and not
    Prometheus or another namespace's pods; metrics admits Prometheus; inference is open."""
    policy, docs = network_policy_from_chart(helm)
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
    serving = children.deployment("fraud", "models", example_spec(), "base")
    assert selector_matches(policy["spec"]["podSelector"], serving["spec"]["template"]["metadata"]["labels"])
    other = children.deployment("other", "models", example_spec(), "base")
    assert not selector_matches(policy["spec"]["podSelector"], other["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {p["name"] for p in serving["spec"]["template"]["spec"]["containers"][0]["ports"]}
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(by_port) == ports == {"inference", "management", "metrics"}
    assert "from" not in by_port["inference"]  # open by default (networkPolicy.inferenceFrom)

    operator_pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["metadata"]["labels"]
    operator_ns = {"kubernetes.io/metadata.name": "selfheal-system"}
    prometheus_pod, prometheus_ns = {"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"}
    management, metrics = by_port["management"]["from"], by_port["metrics"]["from"]
    assert any(peer_admits(p, operator_pod, operator_ns) for p in management)
    assert not any(peer_admits(p, operator_pod, {"kubernetes.io/metadata.name": "models"}) for p in management)
    assert not any(peer_admits(p, prometheus_pod, prometheus_ns) for p in management)
    assert any(peer_admits(p, prometheus_pod, prometheus_ns) for p in metrics)
    assert not any(peer_admits(p, operator_pod, operator_ns) for p in metrics)

    restricted, _ = network_policy_from_chart(
        helm, "--set-json", 'networkPolicy.inferenceFrom=[{"namespaceSelector":{"matchLabels":{"team":"fraud"}}}]')
    inference = next(r for r in restricted["spec"]["ingress"] if r["ports"][0]["port"] == "inference")
    assert inference["from"] == [{"namespaceSelector": {"matchLabels": {"team": "fraud"}}}]
    kubernetes_validate.validate(restricted, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("raw", ['{"operator": []}', '[]', '{"operator": [{}], "metrics": {}}', "not json"])
def test_bad_network_policy_settings_are_refused(raw):
    """A broken setting stops the operator at start rather than leaving the management port open."""
    with pytest.raises(ValueError):
        network_policy.network_policy_settings({network_policy.NETWORK_POLICY_ENV: raw})
    assert network_policy.network_policy_settings({}) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("storage s3://AKIA:secret/x@bucket/p: failed", "storage s3://***@bucket/p: failed"),
    ("https://u:p@h/x?X-Amz-Signature=abc&X-Amz-Credential=AK%2F1&x=1",
     "https://***@h/x?X-Amz-Signature=***&X-Amz-Credential=***&x=1"),
    ("az://c/p?sv=2022-11-02&sig=Zm9v%3D&se=1", "az://c/p?sv=2022-11-02&sig=***&se=1"),
    ("gs://b/p?access_token=ya29.x y", "gs://b/p?access_token=*** y"),
    ("GET http://10.0.0.5:8081/models/fraud?customized=true: 503", None),   # nothing secret: unchanged
    ("file:///var/lib/selfheal (ns/m)", None),
])
def test_redact(text, expected):
    assert redact(text) == (text if expected is None else expected)


def test_registry_errors_carry_no_credentials():
    """A real fsspec HTTP registry that cannot be reached: the error names the storage (so a person
    knows where), but neither the user info nor the token of its URI."""
    uri = f"http://AKIAEXAMPLEKEY:{SECRET}@127.0.0.1:9/store?token=TOKEN{SECRET}"
    with pytest.raises(RegistryError) as caught:
        AdapterRegistry(uri, "models", "fraud").get("v1")
    message = str(caught.value)
    assert "http://***@127.0.0.1:9/store" in message and SECRET not in message and "AKIA" not in message
    assert SECRET not in (caught.value.uri or "")


LOGGING_PROBE = f'''
import logging, sys
from model_handler.redact import install_log_redaction
install_log_redaction()
logging.basicConfig(stream=sys.stdout, format="%(name)s %(message)s", level=logging.DEBUG)
uri = "{CREDENTIAL_URI}"
logging.getLogger("kopf.objects").debug("Creation is in progress: %r", {{"spec": {{"storage": {{"uri": uri}}}}}})
logging.getLogger("x").info("plain %s", "text")
try:
    raise RuntimeError("cannot open " + uri)
except RuntimeError:
    logging.getLogger("y").exception("failed")
'''


def test_log_redaction_covers_arguments_and_tracebacks(tmp_path):
    """The operator's record factory: a dict argument (how Kopf logs a body) and a traceback both
    come out without the credentials, in a real interpreter's logging."""
    result = subprocess.run([sys.executable, "-c", LOGGING_PROBE], capture_output=True, text=True, timeout=60,
                            env={"PYTHONSAFEPATH": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Creation is in progress" in out and "plain text" in out and "RuntimeError: cannot open s3://***@" in out
    assert SECRET not in out and "AKIAEXAMPLEKEY" not in out


def test_operator_runs_with_the_chart_without_secret_access(helm):
    """The chart grants no Secrets anywhere and mounts credentials only by envFrom when asked."""
    for values in ((), ("--set", "watch.mode=namespaced", "--set", "watch.namespaces={a,b}")):
        docs = template(helm, *values)
        rules = [r for d in docs if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]]
        assert rules and not any("secrets" in r["resources"] or "*" in r["resources"] + r["verbs"] for r in rules)
    container = pod_spec(next(d for d in template(helm) if d["kind"] == "Deployment"))["containers"][0]
    assert "envFrom" not in container
    with_secret = copy.deepcopy(pod_spec(next(d for d in template(helm, "--set", "storage.secretName=s3")
                                              if d["kind"] == "Deployment"))["containers"][0])
    assert with_secret["envFrom"] == [{"secretRef": {"name": "s3"}}]
