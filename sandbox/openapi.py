"""The `/openapi/v3` documents kubectl reads before `apply`, `diff`, `explain` and `patch`.

kubectl decides per kind whether the server validates fields itself by looking for a PATCH operation
carrying that kind's `x-kubernetes-group-version-kind` and a `fieldValidation` query parameter; when
found, it sends `?fieldValidation=Strict` and leaves validation to us (see schema.py). Custom resources
get their CRD schema as the component schema (for `kubectl explain`); built-in kinds get an open one.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

QUERY_PARAMETERS = ("fieldValidation", "dryRun", "fieldManager", "force")


def gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def schema_name(group: str, version: str, kind: str) -> str:
    reversed_group = ".".join(reversed(group.split("."))) if group else "io.k8s.api.core"
    return f"{reversed_group}.{version}.{kind}"


def _operation(action: str, gvk: dict[str, str], ref: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{action}{gvk['kind']}",
        "parameters": [{"name": p, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
                       for p in QUERY_PARAMETERS],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
    }
    return op


def gv_document(group: str, version: str,
                resources: Iterable[tuple[str, str, bool, dict[str, Any] | None]]) -> dict[str, Any]:
    """One group-version's OpenAPI v3 document; resources are (plural, kind, namespaced, schema-or-None)."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    prefix = "/" + gv_path(group, version)
    for plural, kind, namespaced, crd_schema in resources:
        gvk = {"group": group, "version": version, "kind": kind}
        name = schema_name(group, version, kind)
        ref = f"#/components/schemas/{name}"
        base = f"{prefix}/namespaces/{{namespace}}/{plural}" if namespaced else f"{prefix}/{plural}"
        paths[base] = {"get": _operation("list", gvk, ref), "post": _operation("post", gvk, ref)}
        paths[f"{base}/{{name}}"] = {action_method: _operation(action, gvk, ref) for action_method, action in
                                     (("get", "get"), ("put", "put"), ("patch", "patch"), ("delete", "delete"))}
        if crd_schema is not None:
            schema = json.loads(json.dumps(crd_schema))
            schema.setdefault("type", "object")
            properties = schema.setdefault("properties", {})
            properties.setdefault("apiVersion", {"type": "string"})
            properties.setdefault("kind", {"type": "string"})
            properties.setdefault("metadata", {"type": "object"})
        else:
            schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        schema["x-kubernetes-group-version-kind"] = [gvk]
        schemas[name] = schema
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes (selfheal sandbox)", "version": "v1.33.0"},
            "paths": paths, "components": {"schemas": schemas}}


def document_hash(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:32].upper()


def index(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The `/openapi/v3` root: one entry per group-version with a content-hashed URL (clients cache by it)."""
    return {"paths": {path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={document_hash(doc)}"}
                      for path, doc in sorted(documents.items())}}
