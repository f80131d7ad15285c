"""The few Kubernetes API calls the operator makes: plain REST over aiohttp.

Create-or-update is idempotent: "already exists" means patch (strategic merge for built-in kinds),
so a handler retried after a crash converges instead of failing. API errors become
`kopf.TemporaryError` (retry later) except where the caller needs to decide.

Credentials are Kopf's own: the pod's service account, else KUBECONFIG (`kopf.login_with_*`).
No generated client: kubernetes_asyncio's models are 859 modules and about 39 MiB of the
operator's memory, and Kopf imports them whenever the package is installed.
"""
from __future__ import annotations

import logging
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import kopf

log = logging.getLogger(__name__)
USER_AGENT = "selfheal-operator/0.1"
PATCH_TYPE = "application/strategic-merge-patch+json"
# A pod's service-account token is projected and rotated by the kubelet: it is read again this often.
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
TOKEN_REREAD_SECONDS = 60.0

# kind -> (API path prefix, plural)
_KINDS = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Job": ("/apis/batch/v1", "jobs"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
}


class ApiError(Exception):
    """An API call answered with an error status: the HTTP reason phrase, and the Status body's message."""

    def __init__(self, status: int, reason: str, message: str = ""):
        super().__init__(f"HTTP {status} {reason}" + (f": {message}" if message else ""))
        self.status, self.reason, self.message = status, reason, message


@dataclass
class Api:
    session: aiohttp.ClientSession
    server: str
    authorization: str | None = None
    rotating_token: bool = False     # the service account's: read again every TOKEN_REREAD_SECONDS
    read_at: float = 0.0

    def _authorization(self) -> dict[str, str]:
        if self.rotating_token and time.monotonic() - self.read_at > TOKEN_REREAD_SECONDS:
            self.authorization = f"Bearer {SERVICE_ACCOUNT_TOKEN.read_text().strip()}"
            self.read_at = time.monotonic()
        return {"Authorization": self.authorization} if self.authorization else {}

    async def call(self, method: str, path: str, body: dict | None = None, *, query: dict | None = None,
                   content_type: str = "application/json") -> dict:
        url = self.server + path + (f"?{urlencode(query)}" if query else "")
        headers = {**self._authorization(), **({"Content-Type": content_type} if body is not None else {})}
        async with self.session.request(method, url, json=body, headers=headers) as response:
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = {}
            if response.status >= 400:
                message = answer.get("message", "") if isinstance(answer, dict) else ""
                raise ApiError(response.status, response.reason or "", message)
            return answer if isinstance(answer, dict) else {}


_api: Api | None = None


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context(cafile=info.ca_path,
                                         cadata=info.ca_data.decode() if info.ca_data else None)
    certificate, key = info.certificate_path, info.private_key_path
    if info.certificate_data and info.private_key_data:   # load_cert_chain reads files only
        with tempfile.NamedTemporaryFile() as cert_file, tempfile.NamedTemporaryFile() as key_file:
            cert_file.write(info.certificate_data)
            key_file.write(info.private_key_data)
            cert_file.flush()
            key_file.flush()
            context.load_cert_chain(cert_file.name, key_file.name)
    elif certificate:
        context.load_cert_chain(certificate, key)
    return context


async def api_client() -> Api:
    """One shared session: in-cluster credentials if present, else KUBECONFIG (as Kopf logs in)."""
    global _api
    if _api is None:
        settings = kopf.OperatorSettings()
        in_cluster = kopf.login_with_service_account(settings=settings)
        info = in_cluster or kopf.login_with_kubeconfig(settings=settings)
        if info is None:
            raise kopf.TemporaryError("no Kubernetes credentials: neither a service account nor KUBECONFIG",
                                      delay=10)
        auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
        connector = aiohttp.TCPConnector(ssl=_ssl_context(info) if info.server.startswith("https") else False)
        session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}, auth=auth, connector=connector,
                                        timeout=aiohttp.ClientTimeout(total=60))
        _api = Api(session, info.server.rstrip("/"),
                   authorization=f"{info.scheme or 'Bearer'} {info.token}" if info.token else None,
                   rotating_token=in_cluster is not None, read_at=time.monotonic())
    return _api


def _path(kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = _KINDS[kind]
    return f"{prefix}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


_stopping = False


def stopping() -> bool:
    """True once the operator's shutdown closed the API client: a timer Kopf had not stopped yet
    may still fail on the closed client, which is no error of the model's."""
    return _stopping


async def close() -> None:
    global _api, _stopping
    _stopping = True
    if _api is not None:
        await _api.session.close()
        _api = None


def _retry(what: str, err: ApiError, delay: float = 5.0) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"{what}: HTTP {err.status} {err.reason}", delay=delay)


async def ensure(obj: dict, namespace: str, patch_body: dict | None = None) -> None:
    """Create `obj`, or patch it to match if it exists (owner references set by the caller). A
    `patch_body` replaces `obj` in the patch, e.g. with nulls that remove fields `obj` leaves out."""
    api, kind, name = await api_client(), obj["kind"], obj["metadata"]["name"]
    try:
        await api.call("POST", _path(kind, namespace), obj)
        log.info("created %s %s/%s", kind, namespace, name)
    except ApiError as err:
        if err.status != 409:
            raise _retry(f"create {kind} {namespace}/{name}", err) from err
        try:
            await api.call("PATCH", _path(kind, namespace, name), obj if patch_body is None else patch_body,
                           content_type=PATCH_TYPE)
        except ApiError as err2:
            raise _retry(f"patch {kind} {namespace}/{name}", err2) from err2


async def create(obj: dict, namespace: str) -> bool:
    """Create `obj` unless one of that name exists (left as it is); returns whether it was created.
    For objects written once, whose existing copy is the one to keep (a heal Job's config)."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    try:
        await (await api_client()).call("POST", _path(kind, namespace), obj)
    except ApiError as err:
        if err.status != 409:
            raise _retry(f"create {kind} {namespace}/{name}", err) from err
        return False
    log.info("created %s %s/%s", kind, namespace, name)
    return True


async def create_or_read(obj: dict, namespace: str) -> dict:
    """Create `obj` and return it as stored; if one of that name exists, return the existing one
    unchanged. For objects whose content is fixed at creation (a Job's pod template is immutable,
    and its arguments name what it makes): the caller adopts what exists instead of rewriting it."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    try:
        body = await (await api_client()).call("POST", _path(kind, namespace), obj)
    except ApiError as err:
        if err.status != 409:
            raise _retry(f"create {kind} {namespace}/{name}", err) from err
        existing = await read(kind, namespace, name)
        if existing is None:            # deleted in between: the next pass creates it
            raise kopf.TemporaryError(f"{kind} {namespace}/{name} exists and vanished", delay=2) from err
        return existing
    log.info("created %s %s/%s", kind, namespace, name)
    return body


async def read(kind: str, namespace: str, name: str) -> dict | None:
    try:
        return await (await api_client()).call("GET", _path(kind, namespace, name))
    except ApiError as err:
        if err.status == 404:
            return None
        raise _retry(f"read {kind} {namespace}/{name}", err) from err


async def patch(kind: str, namespace: str, name: str, body: dict) -> None:
    try:
        await (await api_client()).call("PATCH", _path(kind, namespace, name), body, content_type=PATCH_TYPE)
    except ApiError as err:
        raise _retry(f"patch {kind} {namespace}/{name}", err) from err


async def delete(kind: str, namespace: str, name: str) -> bool:
    """Delete an object if it exists; returns whether there was one."""
    try:
        await (await api_client()).call("DELETE", _path(kind, namespace, name))
    except ApiError as err:
        if err.status == 404:
            return False
        raise _retry(f"delete {kind} {namespace}/{name}", err) from err
    log.info("deleted %s %s/%s", kind, namespace, name)
    return True


async def list_pods(namespace: str, selector: dict[str, str]) -> list[dict]:
    label_selector = ",".join(f"{k}={v}" for k, v in selector.items())
    try:
        listed = await (await api_client()).call("GET", _path("Pod", namespace), query={"labelSelector": label_selector})
    except ApiError as err:
        raise _retry(f"list pods in {namespace} ({label_selector})", err) from err
    return listed.get("items", [])


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
