"""The operator's API calls, as the sandbox's audit log recorded them, against the chart's RBAC.

The operator under test gets its own bearer token; the sandbox appends every request made with a
token other than its own to `<workdir>/audit.jsonl` (sandbox.emulator.SandboxAPI.audit_log). The
chart is rendered in namespaced mode for the operator's namespace (what the tests run: `--namespace`),
and each recorded call must be allowed by the Role there or by the ClusterRole.
"""
from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "selfheal"
# Non-resource URLs every authenticated user may GET on a real cluster (system:discovery,
# system:public-info-viewer): API discovery and the version.
DISCOVERY_PREFIXES = ("/api", "/apis", "/version", "/openapi")


def audited_calls(audit_log: Path, user: str) -> list[dict]:
    if not audit_log.exists():
        return []
    return [entry for line in audit_log.read_text().splitlines() if line.strip()
            for entry in [json.loads(line)] if entry["user"] == user]


@functools.lru_cache(maxsize=32)
def render(helm: str, namespace: str, *values: str) -> tuple[dict, ...]:
    """The chart in namespaced mode for `namespace` (what the tests run: `--namespace`)."""
    out = subprocess.run([helm, "template", "shm", str(CHART), "--namespace", "selfheal-system",
                          "--set", "watch.mode=namespaced", "--set", f"watch.namespaces={{{namespace}}}", *values],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def render_rbac(helm: str, namespace: str, *values: str) -> tuple[list[dict], list[dict]]:
    """(Role rules in `namespace`, ClusterRole rules) of the chart."""
    docs = render(helm, namespace, *values)
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == namespace]
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    return role["rules"], cluster_role["rules"]


def operator_env(helm: str, namespace: str, *values: str) -> dict[str, str]:
    """The plain env values the chart gives the operator container (e.g. SELFHEAL_NETWORK_POLICY)."""
    (deployment,) = [d for d in render(helm, namespace, *values) if d["kind"] == "Deployment"]
    return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            if "value" in e}


def resource_name(call: dict) -> str:
    return f"{call['resource']}/{call['subresource']}" if call.get("subresource") else call["resource"]


def allows(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(group in rule.get("apiGroups", []) and resource in rule.get("resources", [])
               and verb in rule.get("verbs", []) for rule in rules)


def granted(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def denied_calls(calls: list[dict], namespace: str, role: list[dict], cluster_role: list[dict]) -> list[dict]:
    """The recorded calls the chart's RBAC would refuse (a Role only covers its own namespace)."""
    denied = []
    for call in calls:
        if "resource" not in call:
            if not (call["verb"] == "get" and call["path"].startswith(DISCOVERY_PREFIXES)):
                denied.append(call)
            continue
        key = (call["group"], resource_name(call), call["verb"])
        in_namespace = call["namespace"] == namespace
        if not (allows(cluster_role, *key) or (in_namespace and allows(role, *key))):
            denied.append(call)
    return denied


def used(calls: list[dict]) -> set[tuple[str, str, str]]:
    return {(c["group"], resource_name(c), c["verb"]) for c in calls if "resource" in c}
