"""API discovery and OpenAPI documents, computed from the resources the emulator serves right now.

Fixes kmock's own discovery for real clients: core reports `groupVersion: "v1"` (not "/v1"),
subresources do not repeat their parent's short names, and a CRD's resources appear as soon as
it is written (kubectl and helm re-read discovery after installing CRDs).
"""
from __future__ import annotations

from typing import Any

from sandbox import apierrors, crds, openapi


class DiscoveryMixin:
    """Discovery documents for SandboxAPI; needs `self.resources` and `self._crd_versions`."""

    resources: Any
    _crd_versions: dict[tuple[str, str, str], crds.ServedVersion]

    def _api_versions(self) -> dict[str, Any]:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for resource in self.resources:
            if resource.group:
                groups.setdefault(resource.group, [])
                if resource.version not in groups[resource.group]:
                    groups[resource.group].append(resource.version)
        for group, versions in groups.items():  # preferred (storage / newest) version first
            storage = [v.storage_version for v in self._crd_versions.values() if v.group == group]
            versions.sort(key=lambda v: (v not in storage, not v.startswith("v1") or "beta" in v or "alpha" in v,
                                         v))
        return groups

    def _api_group(self, group: str) -> dict[str, Any]:
        versions = self._groups().get(group)
        if not versions:
            raise apierrors.ApiError(404, "NotFound", f"the server could not find the requested resource "
                                                      f"(group {group})")
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries,
                "preferredVersion": entries[0]}

    def _api_groups(self) -> dict[str, Any]:
        groups = [self._api_group(g) for g in sorted(self._groups())]
        for group in groups:
            del group["kind"], group["apiVersion"]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        entries = []
        for resource in sorted(self.resources, key=lambda r: r.plural or ""):
            if resource.group != group or resource.version != version:
                continue
            info = self.resources[resource]
            entries.append({"name": resource.plural, "singularName": info.singular or resource.plural,
                            "namespaced": bool(info.namespaced), "kind": info.kind, "verbs": sorted(info.verbs),
                            **({"shortNames": sorted(info.shortnames)} if info.shortnames else {}),
                            **({"categories": sorted(info.categories)} if info.categories else {})})
            for sub in sorted(info.subresources):
                entries.append({"name": f"{resource.plural}/{sub}", "singularName": "",
                                "namespaced": bool(info.namespaced), "kind": info.kind,
                                "verbs": ["get", "patch", "update"]})
        if not entries:
            raise apierrors.ApiError(404, "NotFound", f"the server could not find the requested resource "
                                                      f"({group}/{version})")
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": entries}

    def _root_paths(self) -> dict[str, Any]:
        paths = {"/api", "/api/v1", "/apis", "/version", "/openapi/v3", "/healthz", "/readyz", "/livez"}
        for group, versions in self._groups().items():
            paths.add(f"/apis/{group}")
            paths.update(f"/apis/{group}/{v}" for v in versions)
        return {"paths": sorted(paths)}

    def _openapi_documents(self) -> dict[str, dict[str, Any]]:
        by_gv: dict[tuple[str, str], list] = {}
        for resource in self.resources:
            info = self.resources[resource]
            crd = self._crd_versions.get((resource.group, resource.version, resource.plural))
            by_gv.setdefault((resource.group, resource.version), []).append(
                (resource.plural, info.kind, bool(info.namespaced), crd.schema if crd else None))
        return {openapi.gv_path(g, v): openapi.gv_document(g, v, items) for (g, v), items in by_gv.items()}

    def _openapi_index(self) -> dict[str, Any]:
        return openapi.index(self._openapi_documents())

    def _openapi_document(self, gv: str) -> dict[str, Any]:
        documents = self._openapi_documents()
        if gv not in documents:
            raise apierrors.ApiError(404, "NotFound", f"no OpenAPI v3 document for {gv!r}")
        return documents[gv]
