"""The objects a SelfHealingModel owns, rendered as plain dicts (pure functions, no API calls).

Names are deterministic (`<model>-serving`, `<model>-rules`, `<model>-adapter`, `<model>-heal-<n>`)
and every child carries an owner reference to the SelfHealingModel (added by the caller with
`kopf.adopt`), so Kubernetes' garbage collector deletes them with it and no finalizer is needed.

Ports are container-port *names* (`inference`, `management`, `metrics`); the operator finds a pod's
management port by name, so the same code works on a cluster (fixed 8080-8082) and in the sandbox
(whose process kubelet assigns free host ports and writes them into the pod).
"""
from __future__ import annotations

import hashlib
import json
import posixpath

import yaml

from shm_operator.crd import DEFAULT_IMAGE

GROUP = "selfheal.io"
MODEL_LABEL = f"{GROUP}/model"
COMPONENT_LABEL = f"{GROUP}/component"
ADAPTER_ANNOTATION = f"{GROUP}/adapter-version"
RULES_ANNOTATION = f"{GROUP}/rules-hash"
PORTS = {"inference": 8080, "management": 8081, "metrics": 8082}
ADAPTER_DIR = "/etc/selfheal/adapter"
RULES_DIR = "/etc/selfheal/rules"
STATUS_DIR = "/var/run/selfheal/status"


def serving_name(model: str) -> str:
    return f"{model}-serving"


def rules_name(model: str) -> str:
    return f"{model}-rules"


def adapter_config_name(model: str) -> str:
    return f"{model}-adapter"


def labels(model: str, component: str) -> dict[str, str]:
    return {MODEL_LABEL: model, COMPONENT_LABEL: component, "app.kubernetes.io/managed-by": "selfheal"}


def torchserve_model_name(name: str, spec: dict) -> str:
    return (spec.get("model") or {}).get("name") or name


def rules_yaml(spec: dict) -> str:
    return yaml.safe_dump({"rules": spec.get("rules") or []}, sort_keys=False)


def rules_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec.get("rules") or [], sort_keys=True).encode()).hexdigest()[:16]


def rules_configmap(name: str, spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": rules_name(name), "labels": labels(name, "rules")},
            "data": {"rules.yaml": rules_yaml(spec)}}


def adapter_configmap(name: str, version: str) -> dict:
    """HotSwap: the handler watches this file and swaps adapters between batches."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": adapter_config_name(name), "labels": labels(name, "adapter")},
            "data": {"version": version}}


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": serving_name(name), "labels": labels(name, "serving")},
            "spec": {"selector": {MODEL_LABEL: name, COMPONENT_LABEL: "serving"},
                     "ports": [{"name": "inference", "port": PORTS["inference"], "targetPort": "inference"},
                               {"name": "metrics", "port": PORTS["metrics"], "targetPort": "metrics"}]}}


def deployment(name: str, namespace: str, spec: dict, served_version: str) -> dict:
    """The TorchServe pods. `served_version` is baked into the pod template for RollingRestart (a
    change rolls the pods); with HotSwap the template keeps the version it started with and the
    adapter ConfigMap carries the desired one."""
    model = spec.get("model") or {}
    archive = model["archive"]
    store, archive_file = posixpath.dirname(archive.rstrip("/")) or "/", posixpath.basename(archive.rstrip("/"))
    ts_name = torchserve_model_name(name, spec)
    hot_swap = (spec.get("promotion") or {}).get("strategy") == "HotSwap"
    serving = spec.get("serving") or {}
    env = {
        "SELFHEAL_MODEL_NAME": name,
        "SELFHEAL_NAMESPACE": namespace,
        "SELFHEAL_STORAGE_URI": (spec.get("storage") or {}).get("uri", ""),
        "SELFHEAL_ADAPTER_VERSION": served_version,
        "SELFHEAL_ADAPTER_FILE": f"{ADAPTER_DIR}/version" if hot_swap else "",
        "SELFHEAL_RULES_FILE": f"{RULES_DIR}/rules.yaml",
        "SELFHEAL_SAMPLE_FRACTION": str(serving.get("sampleFraction", 0.2)),
        "SELFHEAL_SAMPLE_FLUSH_INTERVAL_S": "5",   # sampled traffic reaches storage within seconds
        "SELFHEAL_STATUS_DIR": STATUS_DIR,
        **{f"SELFHEAL_{port.upper()}_PORT": str(number) for port, number in PORTS.items()},
    }
    args = ["-m", "model_handler.launcher", "serve", "--model-store", store,
            "--model", f"{ts_name}={archive_file}", "--workers", str(serving.get("workers", 2)),
            "--bind", "$(POD_IP)",
            *[arg for port in PORTS for arg in (f"--{port}-port", f"$(SELFHEAL_{port.upper()}_PORT)")]]
    volumes = [{"name": "rules", "configMap": {"name": rules_name(name)}},
               {"name": "status", "emptyDir": {}}]
    mounts = [{"name": "rules", "mountPath": RULES_DIR, "readOnly": True},
              {"name": "status", "mountPath": STATUS_DIR}]
    if hot_swap:
        volumes.append({"name": "adapter", "configMap": {"name": adapter_config_name(name)}})
        mounts.append({"name": "adapter", "mountPath": ADAPTER_DIR, "readOnly": True})
    container = {
        "name": "model-server",
        "image": model.get("image") or DEFAULT_IMAGE,
        "command": ["python"],
        "args": args,
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                *({"name": k, "value": v} for k, v in env.items())],
        "ports": [{"name": port, "containerPort": number} for port, number in PORTS.items()],
        "readinessProbe": {"httpGet": {"path": "/ping", "port": "inference"},
                           "periodSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/ping", "port": "inference"},
                          "initialDelaySeconds": 60, "periodSeconds": 10},
        "volumeMounts": mounts,
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if spec.get("resources"):
        container["resources"] = spec["resources"]
    pod_labels = labels(name, "serving")
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": serving_name(name), "labels": pod_labels},
        "spec": {
            "replicas": spec.get("replicas", 2),
            "selector": {"matchLabels": {MODEL_LABEL: name, COMPONENT_LABEL: "serving"}},
            # Zero downtime: never take a ready pod away before its replacement is ready.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": {ADAPTER_ANNOTATION: served_version,
                                             RULES_ANNOTATION: rules_hash(spec)}},
                "spec": {"containers": [container], "volumes": volumes,
                         "terminationGracePeriodSeconds": 30},
            },
        },
    }


def container_port(pod: dict, port_name: str) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == port_name:
                return int(port["containerPort"])
    return None


def heal_job(name: str, namespace: str, spec: dict, job_name: str, parent: str, version: str,
             config: dict, since: str | None = None) -> dict:
    """The healing Job (ARCHITECTURE.md §4). It reads the model directory the pods serve, so the
    backbone it heals is exactly the one in production."""
    model = spec.get("model") or {}
    healing = spec.get("healing") or {}
    args = ["-m", "model_handler.heal", "--storage-uri", (spec.get("storage") or {}).get("uri", ""),
            "--namespace", namespace, "--model", name, "--model-dir", model["archive"].rstrip("/"),
            "--parent", parent, "--version", version, "--job-name", job_name,
            "--config-json", json.dumps(config, sort_keys=True, separators=(",", ":")),
            "--termination-log", "/dev/termination-log", *(["--since", since] if since else [])]
    container = {"name": "heal", "image": model.get("image") or DEFAULT_IMAGE, "command": ["python"],
                 "args": args, "terminationMessagePath": "/dev/termination-log",
                 "terminationMessagePolicy": "File",
                 "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                     "capabilities": {"drop": ["ALL"]},
                                     "seccompProfile": {"type": "RuntimeDefault"}}}
    if healing.get("resources"):
        container["resources"] = healing["resources"]
    job_labels = {**labels(name, "heal"), f"{GROUP}/adapter-version": version}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name, "labels": job_labels},
        "spec": {"backoffLimit": healing.get("backoffLimit", 1),
                 "activeDeadlineSeconds": healing.get("activeDeadlineSeconds", 600),
                 "template": {"metadata": {"labels": job_labels},
                              "spec": {"restartPolicy": "Never", "containers": [container]}}},
    }
