"""The objects a SelfHealingModel owns, rendered as plain dicts (pure functions, no API calls).

Names are deterministic (`<model>-serving`, `<model>-rules`, `<model>-adapter`, `<model>-heal-<n>`)
and every child carries an owner reference to the SelfHealingModel (added by the caller with
`kopf.adopt`), so Kubernetes' garbage collector deletes them with it and no finalizer is needed.
A heal Job's config ConfigMap (`<model>-heal-<n>-config`) is owned by its Job and goes with it.

Every pod is hardened the same way (`pod_security_context`, `container_security_context`): a fixed
non-root UID, read-only root filesystem, no capabilities, no privilege escalation, RuntimeDefault
seccomp, and no service-account token (neither TorchServe nor the heal Job calls the Kubernetes API).
What they must write goes to emptyDir volumes that TMPDIR/HOME point at (`scratch_volumes`).

Ports are container-port *names* (`inference`, `management`, `metrics`); the operator finds a pod's
management port by name, so the same code works on a cluster (fixed 8080-8082) and in the sandbox
(whose process kubelet assigns free host ports and writes them into the pod).

The builders take the full spec as JSON (`status.full_spec`, `context.ModelPass.spec_json`): every
default is filled in by crd.py's models and none is spelled again here, so a spec that was not
validated fails with a KeyError naming the missing field.
"""
from __future__ import annotations

import copy
import hashlib
import json
import posixpath

import yaml

from model_handler.fetch import local_name
from shm_operator.crd import RolloutStrategy
from shm_operator.names import ADAPTER_ANNOTATION, COMPONENT_LABEL, MODEL_LABEL, RULES_ANNOTATION

PORTS = {"inference": 8080, "management": 8081, "metrics": 8082}
ADAPTER_DIR = "/etc/selfheal/adapter"
RULES_DIR = "/etc/selfheal/rules"
STATUS_DIR = "/var/run/selfheal/status"
HEAL_CONFIG_DIR, HEAL_CONFIG_FILE = "/etc/selfheal/heal", "config.json"
# Writable places under a read-only root filesystem. TorchServe 0.12 writes its config, log4j2 and
# logs (the launcher puts them in a work dir under $TMPDIR), its pid file, worker unix sockets and
# unpacked .mar archives (java.io.tmpdir = $TEMP) there; Python and Java caches go to $HOME.
TMP_DIR = "/var/run/selfheal/tmp"
HOME_DIR = "/var/run/selfheal/home"
# Model delivery (docs/storage.md): an archive given as a URI is copied by the storage-initializer
# init container into this emptyDir; a `pvc://<claim>/<path>` archive is the claim mounted read-only.
MODEL_DIR = "/var/run/selfheal/model"
PVC_DIR = "/var/run/selfheal/pvc"
# The images' user (docker/*.Dockerfile: `USER 10001:10001`).
RUN_AS_USER = 10001
RUN_AS_GROUP = 10001


def serving_name(model: str) -> str:
    return f"{model}-serving"


def rules_name(model: str) -> str:
    return f"{model}-rules"


def adapter_config_name(model: str) -> str:
    return f"{model}-adapter"


def labels(model: str, component: str) -> dict[str, str]:
    return {MODEL_LABEL: model, COMPONENT_LABEL: component, "app.kubernetes.io/managed-by": "selfheal"}


def pod_security_context() -> dict:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_GROUP,
            "fsGroup": RUN_AS_GROUP, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_GROUP,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "privileged": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def scratch_volumes() -> tuple[list[dict], list[dict], dict[str, str]]:
    """emptyDir volumes, their mounts and the env that points every writer at them."""
    volumes = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}, {"name": "home", "emptyDir": {"sizeLimit": "256Mi"}}]
    mounts = [{"name": "tmp", "mountPath": TMP_DIR}, {"name": "home", "mountPath": HOME_DIR}]
    env = {"TMPDIR": TMP_DIR, "TEMP": TMP_DIR, "TMP": TMP_DIR, "HOME": HOME_DIR,
           "XDG_CACHE_HOME": f"{HOME_DIR}/.cache", "PYTHONDONTWRITEBYTECODE": "1"}
    return volumes, mounts, env


def storage_env(spec: dict) -> tuple[dict[str, str], list[dict]]:
    """The storage URI as an env var (never an argument), and the credentials Secret, if named, as
    envFrom: the kubelet reads it, so the operator needs no access to Secrets."""
    storage = spec["storage"]
    secret = storage.get("secretName")
    return ({"SELFHEAL_STORAGE_URI": storage["uri"]},
            [{"secretRef": {"name": secret}}] if secret else [])


def archive_location(archive: str) -> tuple[str, str, str]:
    """(kind, claim, path) of `spec.model.archive`: `path` (a plain path on a volume the image or
    node provides), `pvc` (`pvc://<claim>/<path in the claim>`) or `uri` (any fsspec URI)."""
    if "://" not in archive:
        return "path", "", archive.rstrip("/")
    scheme, rest = archive.split("://", 1)
    if scheme == "pvc":
        claim, _, inside = rest.partition("/")
        if not claim or not inside.strip("/"):
            raise ValueError(f"spec.model.archive {archive!r}: a PVC archive is pvc://<claim>/<path in the claim>")
        return "pvc", claim, inside.strip("/")
    return "uri", "", archive.rstrip("/")


def model_delivery(spec: dict, env: list[dict], env_from: list[dict], *, unpack: bool = False
                   ) -> tuple[list[dict], list[dict], list[dict], str]:
    """How the archive reaches a pod: (init containers, volumes, mounts of the main container, the
    archive's path in it). A URI is fetched and sha256-checked into an emptyDir by the
    storage-initializer (`python -m model_handler.fetch`, same image, same credentials: `env`,
    `env_from` and the pod's service account); `unpack` extracts a `.mar` for the heal Job, which
    reads a model directory."""
    model = spec["model"]
    kind, claim, path = archive_location(model["archive"])
    if kind == "path":
        return [], [], [], path
    if kind == "pvc":
        return ([], [{"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
                [{"name": "model", "mountPath": PVC_DIR, "readOnly": True}], f"{PVC_DIR}/{path}")
    _, scratch_mounts, _ = scratch_volumes()
    init = {"name": "storage-initializer", "image": model["image"], "command": ["python"],
            "args": ["-m", "model_handler.fetch", path, MODEL_DIR, *(["--unpack"] if unpack else [])],
            "env": env, "volumeMounts": [{"name": "model", "mountPath": MODEL_DIR}, *scratch_mounts],
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": container_security_context()}
    if env_from:
        init["envFrom"] = env_from
    return ([init], [{"name": "model", "emptyDir": {}}], [{"name": "model", "mountPath": MODEL_DIR}],
            f"{MODEL_DIR}/{local_name(path, unpack=unpack)}")


def hardened_pod_spec(containers: list[dict], volumes: list[dict], **fields) -> dict:
    return {"securityContext": pod_security_context(), "automountServiceAccountToken": False,
            "enableServiceLinks": False, "containers": containers, "volumes": volumes, **fields}


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
    model = spec["model"]
    ts_name = torchserve_model_name(name, spec)
    hot_swap = spec["promotion"]["strategy"] == RolloutStrategy.HOT_SWAP.value
    serving = spec["serving"]
    scratch, scratch_mounts, scratch_env = scratch_volumes()
    storage, env_from = storage_env(spec)
    env = {
        **scratch_env,
        "SELFHEAL_MODEL_NAME": name,
        "SELFHEAL_NAMESPACE": namespace,
        **storage,
        "SELFHEAL_ADAPTER_VERSION": served_version,
        "SELFHEAL_ADAPTER_FILE": f"{ADAPTER_DIR}/version" if hot_swap else "",
        "SELFHEAL_RULES_FILE": f"{RULES_DIR}/rules.yaml",
        "SELFHEAL_SAMPLE_FRACTION": str(serving["sampleFraction"]),
        "SELFHEAL_SAMPLE_FLUSH_INTERVAL_S": "5",   # sampled traffic reaches storage within seconds
        "SELFHEAL_STATUS_DIR": STATUS_DIR,
        **{f"SELFHEAL_{port.upper()}_PORT": str(number) for port, number in PORTS.items()},
    }
    init_containers, model_volumes, model_mounts, archive = model_delivery(
        spec, [{"name": k, "value": v} for k, v in {**scratch_env, **storage}.items()], env_from)
    store, archive_file = posixpath.dirname(archive) or "/", posixpath.basename(archive)
    args = ["-m", "model_handler.launcher", "serve", "--model-store", store,
            "--model", f"{ts_name}={archive_file}", "--workers", str(serving["workers"]),
            "--bind", "$(POD_IP)",
            *[arg for port in PORTS for arg in (f"--{port}-port", f"$(SELFHEAL_{port.upper()}_PORT)")]]
    volumes = [{"name": "rules", "configMap": {"name": rules_name(name)}},
               {"name": "status", "emptyDir": {}}, *scratch, *model_volumes]
    mounts = [{"name": "rules", "mountPath": RULES_DIR, "readOnly": True},
              {"name": "status", "mountPath": STATUS_DIR}, *scratch_mounts, *model_mounts]
    if hot_swap:
        volumes.append({"name": "adapter", "configMap": {"name": adapter_config_name(name)}})
        mounts.append({"name": "adapter", "mountPath": ADAPTER_DIR, "readOnly": True})
    container = {
        "name": "model-server",
        "image": model["image"],
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
        "securityContext": container_security_context(),
    }
    if env_from:
        container["envFrom"] = env_from
    if spec.get("resources"):
        container["resources"] = spec["resources"]
    pod_labels = labels(name, "serving")
    return with_pod_template(spec, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": serving_name(name), "labels": pod_labels},
        "spec": {
            "replicas": spec["replicas"],
            "selector": {"matchLabels": {MODEL_LABEL: name, COMPONENT_LABEL: "serving"}},
            # Zero downtime: never take a ready pod away before its replacement is ready.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": {ADAPTER_ANNOTATION: served_version,
                                             RULES_ANNOTATION: rules_hash(spec)}},
                "spec": hardened_pod_spec([container], volumes, terminationGracePeriodSeconds=30,
                                          **({"initContainers": init_containers} if init_containers else {})),
            },
        },
    })


def container_port(pod: dict, port_name: str) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == port_name:
                return int(port["containerPort"])
    return None


def heal_config_text(config: dict) -> str:
    """The heal Job's config file: compact sorted JSON, ASCII only (its sha256 is the file's)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def heal_config_map(job: dict, config: dict) -> dict:
    """The heal Job's config file as a ConfigMap owned by `job` as stored (its uid), deleted with it;
    not argv, where Linux refuses any one argument over 128 KiB (a valid spec renders up to ~0.57 MB,
    docs/architecture.md). No blockOwnerDeletion: no right on jobs/finalizers is needed."""
    meta = job["metadata"]
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{meta['name']}-config", "labels": labels(meta["labels"][MODEL_LABEL], "heal-config"),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True}]},
            "data": {HEAL_CONFIG_FILE: heal_config_text(config)}}


def heal_job(name: str, namespace: str, spec: dict, *, job_name: str, parent: str, version: str,
             config: dict, since: str | None = None) -> dict:
    """The healing Job (ARCHITECTURE.md §4). It reads the model directory the pods serve, so the
    backbone it heals is exactly the one in production, and `config` from its ConfigMap
    (`heal_config_map`), whose sha256 it is given, so it runs with the config it was made for."""
    model, healing = spec["model"], spec["healing"]
    scratch, scratch_mounts, scratch_env = scratch_volumes()
    storage, env_from = storage_env(spec)
    env = [{"name": k, "value": v} for k, v in {**scratch_env, **storage}.items()]
    init_containers, model_volumes, model_mounts, model_dir = model_delivery(spec, env, env_from, unpack=True)
    args = ["-m", "model_handler.heal", "--namespace", namespace, "--model", name, "--model-dir", model_dir,
            "--parent", parent, "--version", version, "--job-name", job_name,
            "--config", f"{HEAL_CONFIG_DIR}/{HEAL_CONFIG_FILE}",
            "--config-sha256", hashlib.sha256(heal_config_text(config).encode()).hexdigest(),
            "--termination-log", "/dev/termination-log", *(["--since", since] if since else [])]
    config_volume = {"name": "heal-config", "configMap": {"name": f"{job_name}-config"}}
    config_mount = {"name": "heal-config", "mountPath": HEAL_CONFIG_DIR, "readOnly": True}
    container = {"name": "heal", "image": model["image"], "command": ["python"],
                 "args": args, "env": env,
                 "volumeMounts": [config_mount, *scratch_mounts, *model_mounts],
                 "terminationMessagePath": "/dev/termination-log",
                 "terminationMessagePolicy": "File", "securityContext": container_security_context()}
    if env_from:
        container["envFrom"] = env_from
    if healing.get("resources"):
        container["resources"] = healing["resources"]
    job_labels = {**labels(name, "heal"), ADAPTER_ANNOTATION: version}
    return with_pod_template(spec, {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name, "labels": job_labels},
        "spec": {"backoffLimit": healing["backoffLimit"],
                 "activeDeadlineSeconds": healing["activeDeadlineSeconds"],
                 "template": {"metadata": {"labels": job_labels},
                              "spec": hardened_pod_spec([container], [config_volume, *scratch, *model_volumes],
                                                        restartPolicy="Never",
                                                        **({"initContainers": init_containers} if init_containers else {}))}},
    })


# ---- spec.podTemplate, the PodDisruptionBudget, status.url -------------------------------------

POD_TEMPLATE_FIELDS = ("serviceAccountName", "imagePullSecrets", "nodeSelector", "tolerations", "affinity",
                       "priorityClassName")


def with_pod_template(spec: dict, workload: dict) -> dict:
    """`workload` (a Deployment or a Job) with spec.podTemplate applied to its pod template: the
    service account, pull secrets and scheduling fields, and the extra labels and annotations under
    the operator's own (which win: the Deployment's selector and the operator's lookups rely on
    them). Fields left empty are not written, so a model without a pod template renders as before."""
    custom = spec.get("podTemplate") or {}
    template = workload["spec"]["template"]
    meta = template.setdefault("metadata", {})
    for key in ("labels", "annotations"):
        if custom.get(key):
            meta[key] = {**custom[key], **(meta.get(key) or {})}
    for key in POD_TEMPLATE_FIELDS:
        value = custom.get(key)
        if key == "tolerations" and value:
            value = [{k: v for k, v in toleration.items() if v is not None} for toleration in value]
        if value:
            template["spec"][key] = value
    return workload


def clearing_pod_template(workload: dict) -> dict:
    """`workload` as a strategic-merge patch that also removes the spec.podTemplate fields it leaves
    out (null deletes a key), so a field dropped from spec.podTemplate leaves the pods. Extra labels
    and annotations dropped from it are not known here and stay until the object is recreated."""
    patch = copy.deepcopy(workload)
    pod = patch["spec"]["template"]["spec"]
    for key in POD_TEMPLATE_FIELDS:
        pod.setdefault(key, None)
    return patch


def pod_selector(name: str) -> dict[str, str]:
    """The labels that select a model's serving pods (the Deployment's, the Service's, the PDB's)."""
    return {MODEL_LABEL: name, COMPONENT_LABEL: "serving"}


def selector_string(name: str) -> str:
    """The serving pods' selector as a label-selector string (status.selector, for `/scale`)."""
    return ",".join(f"{key}={value}" for key, value in pod_selector(name).items())


def inference_url(name: str, namespace: str, spec: dict) -> str:
    """The in-cluster inference endpoint (status.url): the Service's DNS name, the inference port and
    TorchServe's predictions path of the model."""
    return (f"http://{serving_name(name)}.{namespace}.svc.cluster.local:{PORTS['inference']}"
            f"/predictions/{torchserve_model_name(name, spec)}")


def _int_or_percent(value):
    """IntOrString as the PDB API wants it: a count as an integer, a percentage as a string."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def disruption_budget(name: str, spec: dict) -> dict | None:
    """The serving pods' PodDisruptionBudget from spec.serving.disruptionBudget, or None. The unset
    one of minAvailable/maxUnavailable is null, so a patch that switches between them removes the
    other (the API refuses both at once)."""
    budget = (spec.get("serving") or {}).get("disruptionBudget")
    if not budget:
        return None
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": serving_name(name), "labels": labels(name, "serving")},
            "spec": {"selector": {"matchLabels": pod_selector(name)},
                     **{key: _int_or_percent(budget.get(key)) for key in ("minAvailable", "maxUnavailable")}}}
