"""The few Kubernetes API calls the operator makes, through kubernetes_asyncio.

Create-or-update is idempotent: "already exists" means patch (strategic merge for built-in kinds),
so a handler retried after a crash converges instead of failing. API errors become
`kopf.TemporaryError` (retry later) except where the caller needs to decide.
"""
from __future__ import annotations

import logging

import kopf
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)
_api: client.ApiClient | None = None


async def api_client() -> client.ApiClient:
    """One shared client: in-cluster credentials if present, else KUBECONFIG."""
    global _api
    if _api is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            await config.load_kube_config()
        _api = client.ApiClient()
    return _api


_stopping = False


def stopping() -> bool:
    """True once the operator's shutdown closed the API client: a timer Kopf had not stopped yet
    may still fail on the closed client, which is no error of the model's."""
    return _stopping


async def close() -> None:
    global _api, _stopping
    _stopping = True
    if _api is not None:
        await _api.close()
        _api = None


def _retry(what: str, err: ApiException, delay: float = 5.0) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"{what}: HTTP {err.status} {err.reason}", delay=delay)


_KINDS = {
    "ConfigMap": ("CoreV1Api", "namespaced_config_map"),
    "Service": ("CoreV1Api", "namespaced_service"),
    "Deployment": ("AppsV1Api", "namespaced_deployment"),
    "Job": ("BatchV1Api", "namespaced_job"),
    "NetworkPolicy": ("NetworkingV1Api", "namespaced_network_policy"),
    "PodDisruptionBudget": ("PolicyV1Api", "namespaced_pod_disruption_budget"),
}


async def ensure(obj: dict, namespace: str, patch_body: dict | None = None) -> None:
    """Create `obj`, or patch it to match if it exists (owner references set by the caller). A
    `patch_body` replaces `obj` in the patch, e.g. with nulls that remove fields `obj` leaves out."""
    api_name, suffix = _KINDS[obj["kind"]]
    api = getattr(client, api_name)(await api_client())
    name = obj["metadata"]["name"]
    try:
        await getattr(api, f"create_{suffix}")(namespace, obj)
        log.info("created %s %s/%s", obj["kind"], namespace, name)
    except ApiException as err:
        if err.status != 409:
            raise _retry(f"create {obj['kind']} {namespace}/{name}", err) from err
        try:
            await getattr(api, f"patch_{suffix}")(name, namespace, obj if patch_body is None else patch_body)
        except ApiException as err2:
            raise _retry(f"patch {obj['kind']} {namespace}/{name}", err2) from err2


async def create(obj: dict, namespace: str) -> bool:
    """Create `obj` unless one of that name exists (left as it is); returns whether it was created.
    For objects written once, whose existing copy is the one to keep (a heal Job's config)."""
    api_name, suffix = _KINDS[obj["kind"]]
    api = getattr(client, api_name)(await api_client())
    name = obj["metadata"]["name"]
    try:
        await getattr(api, f"create_{suffix}")(namespace, obj)
    except ApiException as err:
        if err.status != 409:
            raise _retry(f"create {obj['kind']} {namespace}/{name}", err) from err
        return False
    log.info("created %s %s/%s", obj["kind"], namespace, name)
    return True


async def create_or_read(obj: dict, namespace: str) -> dict:
    """Create `obj` and return it as stored; if one of that name exists, return the existing one
    unchanged. For objects whose content is fixed at creation (a Job's pod template is immutable,
    and its arguments name what it makes): the caller adopts what exists instead of rewriting it."""
    api_name, suffix = _KINDS[obj["kind"]]
    api = getattr(client, api_name)(await api_client())
    name = obj["metadata"]["name"]
    try:
        result = await getattr(api, f"create_{suffix}")(namespace, obj, _preload_content=False)
        body = await result.json()
    except ApiException as err:
        if err.status != 409:
            raise _retry(f"create {obj['kind']} {namespace}/{name}", err) from err
        body = {"kind": "Status", "code": 409}
    if body.get("kind") == "Status":    # raw responses do not raise: a 409 may arrive as a Status body
        if body.get("code") != 409:
            raise kopf.TemporaryError(f"create {obj['kind']} {namespace}/{name}: {body.get('message')}", delay=5)
        existing = await read(obj["kind"], namespace, name)
        if existing is None:            # deleted in between: the next pass creates it
            raise kopf.TemporaryError(f"{obj['kind']} {namespace}/{name} exists and vanished", delay=2)
        return existing
    log.info("created %s %s/%s", obj["kind"], namespace, name)
    return body


async def read(kind: str, namespace: str, name: str) -> dict | None:
    api_name, suffix = _KINDS[kind]
    api = getattr(client, api_name)(await api_client())
    try:
        result = await getattr(api, f"read_{suffix}")(name, namespace, _preload_content=False)
    except ApiException as err:
        if err.status == 404:
            return None
        raise _retry(f"read {kind} {namespace}/{name}", err) from err
    body = await result.json()
    if body.get("kind") == "Status":  # raw responses do not raise: a 404 arrives as a Status body
        if body.get("code") == 404:
            return None
        raise kopf.TemporaryError(f"read {kind} {namespace}/{name}: {body.get('message')}", delay=5)
    return body


async def patch(kind: str, namespace: str, name: str, body: dict) -> None:
    api_name, suffix = _KINDS[kind]
    api = getattr(client, api_name)(await api_client())
    try:
        await getattr(api, f"patch_{suffix}")(name, namespace, body)
    except ApiException as err:
        raise _retry(f"patch {kind} {namespace}/{name}", err) from err


async def delete(kind: str, namespace: str, name: str) -> bool:
    """Delete an object if it exists; returns whether there was one."""
    api_name, suffix = _KINDS[kind]
    api = getattr(client, api_name)(await api_client())
    try:
        await getattr(api, f"delete_{suffix}")(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return False
        raise _retry(f"delete {kind} {namespace}/{name}", err) from err
    log.info("deleted %s %s/%s", kind, namespace, name)
    return True


async def list_pods(namespace: str, selector: dict[str, str]) -> list[dict]:
    api = client.CoreV1Api(await api_client())
    label_selector = ",".join(f"{k}={v}" for k, v in selector.items())
    try:
        result = await api.list_namespaced_pod(namespace, label_selector=label_selector, _preload_content=False)
        return (await result.json()).get("items", [])
    except ApiException as err:
        raise _retry(f"list pods in {namespace} ({label_selector})", err) from err


def pod_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def init_failure(pod: dict) -> str:
    """Why an init container (the storage-initializer) of the pod failed, or ""."""
    for state in (pod.get("status") or {}).get("initContainerStatuses") or []:
        terminated = (state.get("state") or {}).get("terminated") or (state.get("lastState") or {}).get("terminated")
        if terminated and terminated.get("exitCode"):
            return (f"init container {state.get('name')} exited with {terminated['exitCode']}: "
                    f"{(terminated.get('message') or '').strip()[-800:]}").rstrip(": ")
    return ""


def termination_message(pod: dict) -> str:
    """The first container's termination message (the heal Job's result JSON)."""
    for state in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (state.get("state") or {}).get("terminated") or (state.get("lastState") or {}).get("terminated")
        if terminated and terminated.get("message"):
            return terminated["message"]
    return ""
