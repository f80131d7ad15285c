"""The sandbox's Kubernetes API: kmock's KubernetesEmulator, extended until real clients work on it.

kmock gives the HTTP server, the request model with its reaction DSL (user reactions still win, so
tests can inject faults: `api['get /api/v1/namespaces'] << 500`), the object store (`api.objects`)
and the bundled discovery data of built-in kinds. This subclass adds what kubectl, helm and Kopf
need from a real apiserver: resourceVersions/uid/generation, typed lists, watches that resume from a
resourceVersion (and watch-list), CRD registration with Established conditions and schema checks,
PUT/PATCH (merge, JSON, strategic, server-side apply), dry runs, finalizers, owner-reference and
namespace cleanup, label/field selectors, protobuf bodies, OpenAPI v3 and Status error reasons.
State lives in memory only: a restarted emulator starts empty (see README.md).
"""
from __future__ import annotations

import asyncio
import base64
import collections
import copy
import datetime
import gzip
import importlib.resources
import json
import random
import string
import uuid
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import enums, references, rendering

from sandbox import apierrors, crds, patches, schema, selectors, tables
from sandbox.discovery import DiscoveryMixin
from sandbox.intake import RequestIntakeMixin
from sandbox.paths import ApiPath, parse_api_path


SERVER_VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-selfheal-sandbox",
                  "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                  "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
                  "platform": "linux/amd64"}
UNSERVED_GROUPS = {"metrics.k8s.io", "gateway.networking.k8s.io"}
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
EVENTS_KEPT_PER_RESOURCE = 5000
NS = references.resource("", "v1", "namespaces")
CRD = references.resource(crds.CRD_GROUP, "v1", crds.CRD_PLURAL)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything that bumps `metadata.generation` when changed (all but metadata and status)."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


@attrs.define(kw_only=True)
class SandboxAPI(RequestIntakeMixin, DiscoveryMixin, kmock.KubernetesEmulator):
    """A KubernetesEmulator that real kubectl, helm and Kopf accept. Serve it with `kmock.Server(api)`."""

    _rv: int = attrs.field(default=1, init=False)
    _history: dict[tuple[str, str], collections.deque] = attrs.field(factory=dict, init=False)
    _compacted_rv: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)
    _tick: asyncio.Event | None = attrs.field(default=None, init=False)
    _crd_versions: dict[tuple[str, str, str], crds.ServedVersion] = attrs.field(factory=dict, init=False)
    _request_count: int = attrs.field(default=0, init=False)
    request_counts: collections.Counter = attrs.field(factory=collections.Counter, init=False)
    # Where the process kubelet writes `<namespace>/<pod>/<container>.log`; serves `kubectl logs`.
    pod_logs_dir: Path | None = None
    # Requests made with a bearer token other than the sandbox's own ("sandbox") are appended here as
    # JSON lines {user, verb, group, resource, subresource, namespace, name, path}: an audit log, so a
    # test can give a client its own token and see every call it made (the RBAC it needs).
    audit_log: Path | None = None

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock's bundled discovery data of the built-in kinds (read directly: load_bundled() warns on 3.11+)
        bundled = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
        self.resources.load_data(gzip.decompress(bundled))
        for resource in list(self.resources):
            if resource.group in UNSERVED_GROUPS:
                del self.resources[resource]
        for name in INITIAL_NAMESPACES:
            self._store(NS, None, name, self._stamp_new(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
                 "spec": {}, "status": {"phase": "Active"}}, None))

    # ---------------------------------------------------------------- routing
    async def _serve(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        raw_path = request.url.path.rstrip("/") or "/"
        method = request.method.value if request.method else "GET"
        if self.audit_log is not None:
            self._audit(request, method, raw_path)
        if method == "GET":
            static = {"/version": lambda: SERVER_VERSION, "/api": self._api_versions, "/apis": self._api_groups,
                      "/openapi/v3": self._openapi_index, "/": self._root_paths,
                      "/healthz": lambda: "ok", "/readyz": lambda: "ok", "/livez": lambda: "ok"}
            if raw_path in static:
                result = static[raw_path]()
                if isinstance(result, str):
                    return aiohttp.web.Response(text=result)
                return self._json(result)
            if raw_path.startswith("/openapi/v3/"):
                return self._json(self._openapi_document(raw_path[len("/openapi/v3/"):]))
            parts = raw_path.strip("/").split("/")
            if len(parts) == 2 and parts[0] == "apis":
                return self._json(self._api_group(parts[1]))
        path = parse_api_path(raw_path)
        if path is None:
            raise apierrors.ApiError(404, "NotFound", f"the server could not find the requested resource "
                                                      f"({method} {raw_path})")
        if path.plural is None:
            if method != "GET":
                raise apierrors.method_not_allowed(f"{method} is not allowed on {raw_path}")
            return self._json(self._resource_list(path.group, path.version))
        served = self._served(path)
        params = request.params
        dry_run = "All" in request.url.query.getall("dryRun", [])
        if path.subresource and path.subresource not in served.info.subresources:
            raise apierrors.ApiError(404, "NotFound", f"the server could not find the requested resource "
                                                      f"({path.plural}/{path.subresource})")
        if path.subresource == "log" and path.plural == "pods" and path.name and method == "GET":
            return self._pod_log(path, params)
        if path.subresource == "scale" and path.name and method in ("GET", "PUT", "PATCH"):
            return self._json(self._scale(path, request, params, dry_run))
        if method == "GET" and request.action == enums.action.WATCH:
            return await self._watch(request, path)
        if method == "GET" and path.name:
            return self._json(self._present(self._get(path), path), request=request, path=path, single=True)
        if method == "GET":
            return self._json(self._list(path, params), request=request, path=path)
        if method == "POST" and not path.name:
            obj, warnings = self._create(path, request.data, params, dry_run)
            return self._json(self._present(obj, path), status=201, warnings=warnings)
        if method == "PUT" and path.name:
            obj, warnings = self._replace(path, request.data, params, dry_run)
            return self._json(self._present(obj, path), warnings=warnings)
        if method == "PATCH" and path.name:
            obj, status, warnings = self._patch(path, request, params, dry_run)
            return self._json(self._present(obj, path), status=status, warnings=warnings)
        if method == "DELETE" and path.name:
            options = request.data if isinstance(request.data, dict) else {}
            dry_run = dry_run or "All" in (options.get("dryRun") or [])
            return self._json(self._present(self._delete(path, options, dry_run), path))
        if method == "DELETE":
            return self._json(self._delete_collection(path, params, dry_run))
        raise apierrors.method_not_allowed(f"{method} is not supported on {raw_path}")

    def _audit(self, request: rendering.Request, method: str, raw_path: str) -> None:
        auth = {k.lower(): v for k, v in request.headers.items()}.get("authorization", "")
        user = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        if not user or user == "sandbox":
            return
        path = parse_api_path(raw_path)
        entry: dict[str, Any] = {"user": user, "path": raw_path}
        if path is None or path.plural is None:
            entry["verb"] = method.lower()  # a non-resource URL: discovery, /version
        else:
            if method == "GET":
                verb = "watch" if request.action == enums.action.WATCH else ("get" if path.name else "list")
            else:
                verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                        "DELETE": "delete" if path.name else "deletecollection"}.get(method, method.lower())
            entry.update(verb=verb, group=path.group, resource=path.plural, subresource=path.subresource or "",
                         namespace=path.namespace or "", name=path.name or "")
        with open(self.audit_log, "a") as log:
            log.write(json.dumps(entry) + "\n")

    def _pod_log(self, path: ApiPath, params: dict[str, str]) -> aiohttp.web.Response:
        pod = self._get(ApiPath("", "v1", "pods", path.namespace, path.name))
        containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
        container = params.get("container") or (containers[0] if containers else "")
        if container not in containers:
            raise apierrors.bad_request(f"container {container!r} is not valid for pod {path.name}")
        log_file = (self.pod_logs_dir / (path.namespace or "") / (path.name or "") / f"{container}.log"
                    if self.pod_logs_dir else None)
        if log_file is None or not log_file.exists():
            raise apierrors.bad_request(f'container "{container}" in pod "{path.name}" has no logs (not started '
                                        "by the sandbox kubelet)")
        lines = log_file.read_text(errors="replace").splitlines(keepends=True)
        if params.get("tailLines"):
            lines = lines[-int(params["tailLines"]):] if int(params["tailLines"]) > 0 else []
        return aiohttp.web.Response(text="".join(lines), content_type="text/plain")

    def _json(self, body: Any, status: int = 200, warnings: list[str] | None = None,
              request: rendering.Request | None = None, path: ApiPath | None = None,
              single: bool = False) -> aiohttp.web.Response:
        if request is not None and path is not None and tables.wants_table(request.headers.get("Accept", "")):
            served = self._served(path)
            items = [body] if single else body["items"]
            body = tables.render(items, served.printer_columns if served.printer_columns else None,
                                 body["metadata"].get("resourceVersion", "") if not single else "",
                                 include_object=request.params.get("includeObject", "Metadata"))
        response = aiohttp.web.Response(text=json.dumps(body, separators=(",", ":")), status=status,
                                        content_type="application/json")
        for warning in warnings or []:
            response.headers.add("Warning", f'299 - "{warning}"')
        return response

    # ---------------------------------------------------------------- resources & discovery
    def _served(self, path: ApiPath) -> crds.ServedVersion:
        key = (path.group, path.version, path.plural)
        if key in self._crd_versions:
            return self._crd_versions[key]
        resource = references.resource(path.group, path.version, path.plural)
        if resource not in self.resources:
            raise apierrors.ApiError(404, "NotFound", f"the server could not find the requested resource "
                                                      f"({path.group or 'core'}/{path.version} {path.plural})")
        info = self.resources[resource]
        return crds.ServedVersion(path.group, path.version, path.plural, info, None, "status" in info.subresources,
                                  storage_version=path.version, scale_paths=crds.BUILTIN_SCALE_PATHS)

    def _storage_key(self, served: crds.ServedVersion) -> references.resource:
        return references.resource(served.group, served.storage_version or served.version, served.plural)

    # ---------------------------------------------------------------- persistence (optional)
    @property
    def resource_version(self) -> int:
        """The current global resourceVersion; it grows with every change."""
        return self._rv

    def dump_state(self) -> dict[str, Any]:
        """Every live object and the RV counter, JSON-safe (watch history is not kept)."""
        objects = [{"group": key.group, "version": key.version, "plural": key.plural, "namespace": namespace,
                    "object": obj} for key, namespace, obj in self._live_objects()]
        return {"resourceVersion": self._rv, "objects": objects}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a `dump_state()`; watches from before it get 410 Expired, as after etcd compaction."""
        self._rv = max(self._rv, int(state["resourceVersion"]))
        crd_key = references.resource(crds.CRD_GROUP, "v1", crds.CRD_PLURAL)
        entries = sorted(state["objects"], key=lambda e: references.resource(e["group"], e["version"],
                                                                            e["plural"]) != crd_key)
        for entry in entries:  # CRDs first, so their resources are registered
            key = references.resource(entry["group"], entry["version"], entry["plural"])
            obj = entry["object"]
            self._store(key, entry["namespace"], obj["metadata"]["name"], obj)
            if key == crd_key:
                self._register_crd(obj)
        for key in {(e["group"] or "", e["plural"]) for e in state["objects"]}:
            self._compacted_rv[key] = self._rv

    # ---------------------------------------------------------------- storage primitives
    def _store(self, key: references.resource, namespace: str | None, name: str, obj: dict[str, Any]) -> None:
        if (key, namespace, name) in self._objects:
            self._objects[key, namespace, name].create(obj)
        else:
            self._objects[key, namespace, name] = obj

    def _current(self, key: references.resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        if (key, namespace, name) not in self._objects:
            return None
        obj = self._objects[key, namespace, name]
        return None if obj.deleted else copy.deepcopy(obj.raw)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _record(self, key: references.resource, event_type: str, obj: dict[str, Any]) -> None:
        """Remember the event for watches (resumable by resourceVersion) and wake the watchers."""
        history_key = (key.group or "", key.plural or "")
        history = self._history.setdefault(history_key, collections.deque())
        history.append((int(obj["metadata"]["resourceVersion"]), {"type": event_type, "object": obj}))
        while len(history) > EVENTS_KEPT_PER_RESOURCE:
            self._compacted_rv[history_key] = history.popleft()[0]
        if self._tick is not None:
            self._tick.set()
        self._tick = None

    def _stamp_new(self, obj: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_rv(), creationTimestamp=_now(), generation=1)
        for volatile in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(volatile, None)
        if namespace:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return obj

    def _present(self, obj: dict[str, Any], path: ApiPath) -> dict[str, Any]:
        """The object as seen through the requested version (no conversion: only apiVersion changes)."""
        obj["apiVersion"] = f"{path.group}/{path.version}" if path.group else path.version
        return obj

    # ---------------------------------------------------------------- reads
    def _get(self, path: ApiPath) -> dict[str, Any]:
        served = self._served(path)
        self._check_scope(served, path)
        obj = self._current(self._storage_key(served), path.namespace, path.name or "")
        if obj is None:
            raise apierrors.not_found(path.plural or "", path.group, path.name or "")
        return obj

    def _check_scope(self, served: crds.ServedVersion, path: ApiPath) -> None:
        if served.info.namespaced and path.name is not None and path.namespace is None:
            raise apierrors.ApiError(404, "NotFound", f"the server could not find the requested resource: "
                                                      f"{path.plural} are namespaced; the path lacks a namespace")
        if not served.info.namespaced and path.namespace is not None:
            raise apierrors.ApiError(404, "NotFound", f"the server could not find the requested resource: "
                                                      f"{path.plural} are cluster-scoped")

    def _matching(self, path: ApiPath, params: dict[str, str]) -> list[dict[str, Any]]:
        served = self._served(path)
        key = self._storage_key(served)
        by_labels = selectors.parse_label_selector(params.get("labelSelector"))
        by_fields = selectors.parse_field_selector(params.get("fieldSelector"))
        result = []
        for (resource, namespace, name), stored in self._objects.items():
            if resource != key or stored.deleted:
                continue
            if path.namespace is not None and namespace != path.namespace:
                continue
            if path.name is not None and name != path.name:
                continue
            obj = stored.raw
            if by_labels(obj.get("metadata", {}).get("labels") or {}) and by_fields(obj):
                result.append(copy.deepcopy(obj))
        result.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return [self._present(o, path) for o in result]

    def _list(self, path: ApiPath, params: dict[str, str]) -> dict[str, Any]:
        served = self._served(path)
        return {"kind": f"{served.info.kind}List",
                "apiVersion": f"{path.group}/{path.version}" if path.group else path.version,
                "metadata": {"resourceVersion": str(self._rv)},
                "items": self._matching(path, params)}

    async def _watch(self, request: rendering.Request, path: ApiPath) -> aiohttp.web.StreamResponse:
        served = self._served(path)
        params = request.params
        history_key = (served.group, served.plural)
        by_labels = selectors.parse_label_selector(params.get("labelSelector"))
        by_fields = selectors.parse_field_selector(params.get("fieldSelector"))
        send_initial = params.get("sendInitialEvents") == "true"
        requested = params.get("resourceVersion") or ""
        as_table = tables.wants_table(request.headers.get("Accept", ""))
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None

        def visible(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            return ((path.namespace is None or meta.get("namespace") == path.namespace)
                    and (path.name is None or meta.get("name") == path.name)
                    and by_labels(meta.get("labels") or {}) and by_fields(obj))

        def render(event: dict[str, Any]) -> bytes:
            obj = self._present(copy.deepcopy(event["object"]), path)
            if as_table and event["type"] != "BOOKMARK":
                obj = tables.render([obj], served.printer_columns or None, "", params.get("includeObject", "Metadata"))
            return json.dumps({"type": event["type"], "object": obj}, separators=(",", ":")).encode() + b"\n"

        initial: list[dict[str, Any]] = []
        expired = None
        if send_initial or requested in ("", "0"):
            initial = [{"type": "ADDED", "object": o} for o in self._matching(path, params)]
            cursor = self._rv
        else:
            try:
                cursor = int(requested)
            except ValueError:
                raise apierrors.bad_request(f"resourceVersion {requested!r} is not a number") from None
            if cursor < self._compacted_rv.get(history_key, 0):
                expired = apierrors.expired(f"too old resource version: {cursor} ({self._rv})")
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        if expired is not None:
            # Like the apiserver's watch cache: a 200 stream with one ERROR event (code 410), which
            # clients (client-go, Kopf) answer with a fresh list; an HTTP 410 would be fatal to Kopf.
            await response.write(json.dumps({"type": "ERROR", "object": expired.to_status()}).encode() + b"\n")
            await response.write_eof()
            return response
        try:
            for event in initial:
                await response.write(render(event))
            if send_initial:
                bookmark = {"kind": served.info.kind, "apiVersion": served.version,
                            "metadata": {"resourceVersion": str(cursor),
                                         "annotations": {"k8s.io/initial-events-end": "true"}}}
                await response.write(render({"type": "BOOKMARK", "object": bookmark}))
            while True:
                for rv, event in list(self._history.get(history_key, ())):
                    if rv > cursor:
                        cursor = rv
                        if visible(event["object"]):
                            await response.write(render(event))
                if self._tick is None:
                    self._tick = asyncio.Event()
                tick = self._tick
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation
                    # sent when the watch client disconnects, keeping the server from shutting down.
                    async with asyncio.timeout(remaining):
                        await tick.wait()
                except TimeoutError:
                    break
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away; nothing to clean up
        return response

    # ---------------------------------------------------------------- writes
    def _admit(self, served: crds.ServedVersion, obj: dict[str, Any], params: dict[str, str]) -> list[str]:
        """Default, prune and validate a custom resource like the apiserver; return warnings."""
        if served.schema is None:
            if served.group == crds.CRD_GROUP and served.plural == crds.CRD_PLURAL:
                causes = crds.validate_crd(obj)
                if causes:
                    raise apierrors.invalid("CustomResourceDefinition", crds.CRD_GROUP,
                                            obj.get("metadata", {}).get("name", ""), causes)
            return []
        schema.apply_defaults(obj, served.schema)
        unknown = schema.prune(obj, served.schema)
        mode = params.get("fieldValidation", "Warn" if unknown else "Ignore")
        if unknown and mode == "Strict":
            fields = ", ".join(f'unknown field "{f}"' for f in unknown)
            raise apierrors.bad_request(f"{served.info.kind} in version \"{served.version}\" cannot be handled "
                                        f"as a {served.info.kind}: strict decoding error: {fields}")
        causes = schema.validate(obj, served.schema)
        if causes:
            raise apierrors.invalid(served.info.kind, served.group, obj.get("metadata", {}).get("name", ""), causes)
        return [f'unknown field "{f}"' for f in unknown] if mode == "Warn" else []

    def _normalise(self, served: crds.ServedVersion, obj: dict[str, Any], path: ApiPath) -> None:
        obj["apiVersion"] = f"{served.group}/{served.version}" if served.group else served.version
        obj["kind"] = served.info.kind
        if served.group == "" and served.plural == "secrets" and obj.get("stringData"):
            data = obj.setdefault("data", {})
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(str(value).encode()).decode()
        if served.group == "" and served.plural == "namespaces":
            obj.setdefault("status", {})["phase"] = "Terminating" if obj["metadata"].get(
                "deletionTimestamp") else "Active"
        if served.group == crds.CRD_GROUP and served.plural == crds.CRD_PLURAL:
            obj["status"] = crds.established_status(obj, datetime.datetime.now(tz=datetime.timezone.utc))

    def _create(self, path: ApiPath, body: Any, params: dict[str, str], dry_run: bool,
                ) -> tuple[dict[str, Any], list[str]]:
        served = self._served(path)
        if not isinstance(body, dict):
            raise apierrors.bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        name = meta.get("name")
        if not name:
            raise apierrors.invalid(served.info.kind, served.group, "", [{
                "reason": "FieldValueRequired", "field": "metadata.name",
                "message": "Required value: name or generateName is required"}])
        namespace = path.namespace if served.info.namespaced else None
        if served.info.namespaced:
            if namespace is None:
                namespace = meta.get("namespace")
            if namespace is None:
                raise apierrors.bad_request(f"{path.plural} are namespaced: the request needs a namespace")
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise apierrors.bad_request("the namespace of the provided object does not match the namespace "
                                            "sent on the request")
            ns_obj = self._current(NS, None, namespace)
            if ns_obj is None:
                raise apierrors.not_found("namespaces", "", namespace)
            if ns_obj["metadata"].get("deletionTimestamp"):
                raise apierrors.ApiError(403, "Forbidden", f'{path.plural} "{name}" is forbidden: unable to create '
                                                           f"new content in namespace {namespace} because it is "
                                                           "being terminated")
        key = self._storage_key(served)
        if self._current(key, namespace, name) is not None:
            raise apierrors.already_exists(path.plural or "", path.group, name)
        if served.has_status and served.schema is not None:
            obj.pop("status", None)  # the status subresource owns it
        warnings = self._admit(served, obj, params)
        self._stamp_new(obj, namespace)
        self._normalise(served, obj, path)
        if not dry_run:
            self._store(key, namespace, name, obj)
            self._record(key, "ADDED", obj)
            self._after_write(served, obj)
        return copy.deepcopy(obj), warnings

    def _commit_update(self, served: crds.ServedVersion, path: ApiPath, old: dict[str, Any],
                       new: dict[str, Any], params: dict[str, str], dry_run: bool) -> tuple[dict[str, Any], list[str]]:
        """Shared tail of PUT and PATCH: preconditions, ownership of status, generation, RV, events."""
        if not isinstance(new, dict):
            raise apierrors.bad_request("the object must be a JSON object")
        meta = new.setdefault("metadata", {})
        old_meta = old["metadata"]
        sent_rv = meta.get("resourceVersion")
        if sent_rv and sent_rv != old_meta["resourceVersion"]:
            raise apierrors.conflict(path.plural or "", path.group, path.name or "",
                                     "the object has been modified; please apply your changes to the latest "
                                     "version and try again")
        if meta.get("name") not in (None, old_meta["name"]):
            raise apierrors.bad_request(f"the name of the object ({meta.get('name')}) does not match the name on "
                                        f"the URL ({old_meta['name']})")
        if path.subresource == "status":  # only status may change through /status
            status = new.get("status")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif served.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace"):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
            else:
                meta.pop(fixed, None)
        warnings = self._admit(served, new, params) if path.subresource != "status" else []
        self._normalise(served, new, path)
        meta["generation"] = old_meta.get("generation", 1) + (_spec_part(new) != _spec_part(old))
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == old:
            return old, warnings  # a no-op write changes nothing and wakes no watcher
        if dry_run:
            return new, warnings
        meta["resourceVersion"] = self._next_rv()
        key = self._storage_key(served)
        namespace = old_meta.get("namespace")
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key, namespace, old_meta["name"], new, served)
            return new, warnings
        self._store(key, namespace, old_meta["name"], new)
        self._record(key, "MODIFIED", new)
        self._after_write(served, new)
        return copy.deepcopy(new), warnings

    def _replace(self, path: ApiPath, body: Any, params: dict[str, str], dry_run: bool,
                 ) -> tuple[dict[str, Any], list[str]]:
        served = self._served(path)
        old = self._get(path)
        if isinstance(body, dict) and not (body.get("metadata") or {}).get("resourceVersion") and served.schema:
            raise apierrors.invalid(served.info.kind, served.group, path.name or "", [{
                "reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
                "message": "Invalid value: 0: must be specified for an update"}])
        return self._commit_update(served, path, old, copy.deepcopy(body), params, dry_run)

    def _patch(self, path: ApiPath, request: rendering.Request, params: dict[str, str], dry_run: bool,
               ) -> tuple[dict[str, Any], int, list[str]]:
        served = self._served(path)
        content_type = request._raw_request.content_type if request._raw_request is not None else ""
        body = request.data
        try:
            old = self._get(path)
        except apierrors.ApiError:
            if content_type == "application/apply-patch+yaml" and not path.subresource:
                obj, warnings = self._create(path, body, params, dry_run)
                return obj, 201, warnings
            raise
        new = self._apply_patch_body(served, old, content_type, body, params)
        if not isinstance(new, dict):
            raise apierrors.bad_request("the patch must result in a JSON object")
        obj, warnings = self._commit_update(served, path, old, new, params, dry_run)
        return obj, 200, warnings

    def _apply_patch_body(self, served: crds.ServedVersion, old: dict[str, Any], content_type: str, body: Any,
                          params: dict[str, str]) -> Any:
        if content_type == "application/json-patch+json":
            return patches.json_patch(old, body)
        elif content_type == "application/merge-patch+json":
            return patches.merge_patch(old, body)
        elif content_type == "application/strategic-merge-patch+json":
            if served.schema is not None:
                raise apierrors.ApiError(415, "UnsupportedMediaType", "strategic merge patch is not supported for "
                                                                      "custom resources; use merge or json patch")
            return patches.strategic_merge_patch(old, body)
        elif content_type == "application/apply-patch+yaml":
            if not params.get("fieldManager"):
                raise apierrors.bad_request("fieldManager is required for apply requests")
            return patches.apply_patch(old, body)
        raise apierrors.unsupported_media_type(content_type, "use a json, merge, strategic-merge or apply patch")

    def _scale(self, path: ApiPath, request: rendering.Request, params: dict[str, str], dry_run: bool,
               ) -> dict[str, Any]:
        """The `/scale` subresource: an autoscaling/v1 Scale view onto the object's replica fields."""
        served = self._served(path)
        main = ApiPath(path.group, path.version, path.plural, path.namespace, path.name)
        obj = self._get(main)
        scale = self._scale_view(served, obj)
        method = request.method.value
        if method == "GET":
            return scale
        if method == "PUT":
            wanted = request.data
        else:
            content_type = request._raw_request.content_type if request._raw_request is not None else ""
            wanted = self._apply_patch_body(served, scale, content_type, request.data, params)
        replicas = (wanted.get("spec") or {}).get("replicas") if isinstance(wanted, dict) else None
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise apierrors.invalid("Scale", "autoscaling", path.name or "", [{
                "reason": "FieldValueInvalid", "field": "spec.replicas",
                "message": f"Invalid value: {replicas!r}: must be a non-negative integer"}])
        new = copy.deepcopy(obj)
        target: Any = new
        *parents, leaf = served.scale_paths[0].lstrip(".").split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = replicas
        updated, _ = self._commit_update(served, main, obj, new, params, dry_run)
        return self._scale_view(served, updated)

    def _scale_view(self, served: crds.ServedVersion, obj: dict[str, Any]) -> dict[str, Any]:
        spec_path, status_path, selector_path = served.scale_paths
        meta = obj["metadata"]
        selector = tables.jsonpath(obj, selector_path) if selector_path else None
        if isinstance(selector, dict):  # a LabelSelector object; Scale carries its string form
            selector = ",".join(f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items())
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                             if k in meta},
                "spec": {"replicas": tables.jsonpath(obj, spec_path) or 0},
                "status": {"replicas": tables.jsonpath(obj, status_path) or 0,
                           **({"selector": selector} if selector else {})}}

    def _delete(self, path: ApiPath, options: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        served = self._served(path)
        obj = self._get(path)
        preconditions = options.get("preconditions") or {}
        for field in ("uid", "resourceVersion"):
            if preconditions.get(field) and preconditions[field] != obj["metadata"].get(field):
                raise apierrors.conflict(path.plural or "", path.group, path.name or "",
                                         f"Precondition failed: {field} in precondition: {preconditions[field]}, "
                                         f"{field} in object meta: {obj['metadata'].get(field)}")
        if dry_run:
            return obj
        return self._delete_object(served, obj, options.get("propagationPolicy"))

    def _delete_object(self, served: crds.ServedVersion, obj: dict[str, Any], propagation: str | None = None,
                       ) -> dict[str, Any]:
        meta = obj["metadata"]
        key = self._storage_key(served)
        is_namespace = served.group == "" and served.plural == "namespaces"
        if meta.get("finalizers") or is_namespace:
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["deletionGracePeriodSeconds"] = 0
                meta["resourceVersion"] = self._next_rv()
                self._normalise(served, obj, ApiPath(served.group, served.version, served.plural))
                self._store(key, meta.get("namespace"), meta["name"], obj)
                self._record(key, "MODIFIED", obj)
            if is_namespace:
                self._empty_namespace(meta["name"])
                still_there = self._current(key, None, meta["name"]) is not None
                if still_there and not meta.get("finalizers") and self._namespace_is_empty(meta["name"]):
                    self._remove(key, None, meta["name"], obj, served)
            return copy.deepcopy(obj)
        self._remove(key, meta.get("namespace"), meta["name"], obj, served, propagation)
        return obj

    def _remove(self, key: references.resource, namespace: str | None, name: str, obj: dict[str, Any],
                served: crds.ServedVersion, propagation: str | None = None) -> None:
        """Really delete: the DELETED event, then the dependents (owner references) and bookkeeping."""
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key, namespace, name].delete()
        self._record(key, "DELETED", copy.deepcopy(obj))
        if served.group == crds.CRD_GROUP and served.plural == crds.CRD_PLURAL:
            self._unregister_crd(obj)
        if propagation != "Orphan":
            self._collect_dependents(obj["metadata"]["uid"])
        if namespace is not None:
            parent = self._current(NS, None, namespace)
            if parent and parent["metadata"].get("deletionTimestamp") and self._namespace_is_empty(namespace):
                self._remove(NS, None, namespace, parent, self._served(ApiPath("", "v1", "namespaces")))

    def _delete_collection(self, path: ApiPath, params: dict[str, str], dry_run: bool) -> dict[str, Any]:
        served = self._served(path)
        items = self._matching(path, params)
        if not dry_run:
            items = [self._delete_object(served, obj, params.get("propagationPolicy")) for obj in items]
        return {"kind": f"{served.info.kind}List", "apiVersion": f"{path.group}/{path.version}".lstrip("/"),
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    # ---------------------------------------------------------------- cascades
    def _served_for_key(self, key: references.resource) -> crds.ServedVersion:
        return self._served(ApiPath(key.group or "", key.version or "", key.plural))

    def _live_objects(self) -> list[tuple[references.resource, str | None, dict[str, Any]]]:
        return [(key, namespace, copy.deepcopy(stored.raw)) for (key, namespace, _), stored in
                list(self._objects.items()) if not stored.deleted]

    def _collect_dependents(self, owner_uid: str) -> None:
        """Garbage-collect objects whose every owner reference points at deleted owners (background GC)."""
        for key, _, obj in self._live_objects():
            owners = obj["metadata"].get("ownerReferences") or []
            if owners and any(o.get("uid") == owner_uid for o in owners):
                remaining = [o for o in owners if o.get("uid") != owner_uid and self._uid_alive(o.get("uid"))]
                if not remaining:
                    try:
                        self._delete_object(self._served_for_key(key), obj)
                    except apierrors.ApiError:
                        pass  # its resource was unregistered meanwhile (CRD deleted)

    def _uid_alive(self, uid: str | None) -> bool:
        return any(obj["metadata"].get("uid") == uid for _, _, obj in self._live_objects())

    def _namespace_is_empty(self, namespace: str) -> bool:
        return not any(ns == namespace for _, ns, _ in self._live_objects())

    def _empty_namespace(self, namespace: str) -> None:
        for key, ns, obj in self._live_objects():
            if ns == namespace and not obj["metadata"].get("deletionTimestamp"):
                try:
                    self._delete_object(self._served_for_key(key), obj)
                except apierrors.ApiError:
                    pass

    # ---------------------------------------------------------------- CRDs
    def _after_write(self, served: crds.ServedVersion, obj: dict[str, Any]) -> None:
        if served.group == crds.CRD_GROUP and served.plural == crds.CRD_PLURAL:
            self._register_crd(obj)

    def _register_crd(self, crd: dict[str, Any]) -> None:
        self._unregister_crd(crd, drop_objects=False)
        for version in crds.served_versions(crd):
            self._crd_versions[version.group, version.version, version.plural] = version
            self.resources[references.resource(version.group, version.version, version.plural)] = version.info

    def _unregister_crd(self, crd: dict[str, Any], drop_objects: bool = True) -> None:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group"), (spec.get("names") or {}).get("plural")
        for key in [k for k in self._crd_versions if k[0] == group and k[2] == plural]:
            served = self._crd_versions[key]
            if drop_objects:
                for obj_key, namespace, obj in self._live_objects():
                    if obj_key == self._storage_key(served):
                        obj["metadata"]["resourceVersion"] = self._next_rv()
                        self._objects[obj_key, namespace, obj["metadata"]["name"]].delete()
                        self._record(obj_key, "DELETED", obj)
            del self._crd_versions[key]
            resource = references.resource(*key)
            if resource in self.resources:
                del self.resources[resource]
