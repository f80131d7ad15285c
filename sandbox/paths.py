"""Parse Kubernetes API paths into (group, version, namespace, plural, name, subresource).

kmock's own parser crashes on `/api/v1/namespaces` (no namespace after the word) and cannot tell the
namespace object's subresources (`/api/v1/namespaces/ns1/status`) from a namespaced collection.
"""
from __future__ import annotations

from dataclasses import dataclass

# Subresources of the Namespace object itself, as opposed to resources inside a namespace.
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


@dataclass(frozen=True)
class ApiPath:
    group: str
    version: str
    plural: str | None = None        # None: the group-version discovery document itself
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_api_path(path: str) -> ApiPath | None:
    """Return the parsed path, or None if it is not a resource path under /api or /apis."""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) >= 3 and rest[2] not in NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return ApiPath(group, version)
    if len(rest) > 3:
        return None
    plural, name, sub = (rest + [None, None])[:3]
    return ApiPath(group, version, plural, namespace, name, sub)
