"""What a CustomResourceDefinition means to the API: which resources it serves, and its status.

A real apiserver takes a CRD written through the API, checks its names, serves the resource in
discovery and sets the `NamesAccepted` and `Established` conditions that helm and `kubectl wait`
look for. Here that happens synchronously on every CRD write.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from kmock import ResourceInfo

CRD_GROUP = "apiextensions.k8s.io"
CRD_PLURAL = "customresourcedefinitions"
# (spec replicas, status replicas, label selector) JSON paths behind a `/scale` subresource
BUILTIN_SCALE_PATHS = (".spec.replicas", ".status.replicas", ".spec.selector")
VERBS = ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]


@dataclass
class ServedVersion:
    """One served version of a CRD, with what the emulator needs per request."""
    group: str
    version: str
    plural: str
    info: ResourceInfo
    schema: dict[str, Any] | None
    has_status: bool
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    storage_version: str = ""
    scale_paths: tuple[str, str, str | None] = BUILTIN_SCALE_PATHS


def validate_crd(crd: dict[str, Any]) -> list[dict[str, str]]:
    """Causes (as in apierrors.invalid) for a CRD that a real apiserver would refuse."""
    causes = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    plural = names.get("plural") or ""

    def cause(path: str, message: str, reason: str = "FieldValueInvalid") -> None:
        causes.append({"reason": reason, "field": path, "message": message})

    if not group:
        cause("spec.group", "Required value", "FieldValueRequired")
    if not plural:
        cause("spec.names.plural", "Required value", "FieldValueRequired")
    if not names.get("kind"):
        cause("spec.names.kind", "Required value", "FieldValueRequired")
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        cause("spec.scope", f'Unsupported value: "{spec.get("scope")}": supported values: "Cluster", "Namespaced"',
              "FieldValueNotSupported")
    name = (crd.get("metadata") or {}).get("name")
    if group and plural and name != f"{plural}.{group}":
        cause("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
    versions = spec.get("versions") or []
    if not versions:
        cause("spec.versions", "Required value", "FieldValueRequired")
    elif sum(1 for v in versions if v.get("storage")) != 1:
        cause("spec.versions", "Invalid value: must have exactly one version marked as storage version")
    for number, version in enumerate(versions):
        if not (version.get("schema") or {}).get("openAPIV3Schema"):
            cause(f"spec.versions[{number}].schema.openAPIV3Schema", "Required value", "FieldValueRequired")
    return causes


def served_versions(crd: dict[str, Any]) -> list[ServedVersion]:
    spec = crd["spec"]
    names = spec["names"]
    storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
    result = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        scale = subresources.get("scale") or {}
        info = ResourceInfo(
            namespaced=spec.get("scope") == "Namespaced",
            kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(),
            verbs=VERBS,
            shortnames=names.get("shortNames") or [],
            categories=names.get("categories") or [],
            subresources=[s for s in ("status", "scale") if s in subresources],
        )
        result.append(ServedVersion(
            group=spec["group"], version=version["name"], plural=names["plural"], info=info,
            schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            has_status="status" in subresources,
            printer_columns=version.get("additionalPrinterColumns") or [],
            storage_version=storage,
            scale_paths=(scale.get("specReplicasPath", ".spec.replicas"),
                         scale.get("statusReplicasPath", ".status.replicas"), scale.get("labelSelectorPath")),
        ))
    return result


def established_status(crd: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """The status a healthy apiserver reports once it serves the CRD."""
    spec = crd["spec"]
    names = dict(spec["names"])
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", f"{names['kind']}List")
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    previous = {c.get("type"): c for c in (crd.get("status") or {}).get("conditions") or []}

    def condition(kind: str, reason: str, message: str) -> dict[str, Any]:
        old = previous.get(kind)
        since = old["lastTransitionTime"] if old and old.get("status") == "True" else stamp
        return {"type": kind, "status": "True", "lastTransitionTime": since, "reason": reason, "message": message}

    stored = [v["name"] for v in spec["versions"] if v.get("storage")]
    old_stored = (crd.get("status") or {}).get("storedVersions") or []
    return {
        "acceptedNames": names,
        "conditions": [condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                       condition("Established", "InitialNamesAccepted", "the initial names have been accepted")],
        "storedVersions": sorted(set(old_stored) | set(stored)),
    }
