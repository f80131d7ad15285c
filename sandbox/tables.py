"""Server-side printing (`Accept: ...;as=Table`): the NAME / printer columns / AGE that `kubectl get` shows.

For custom resources the CRD's `additionalPrinterColumns` are evaluated with a small JSONPath subset
(`.a.b`, `[0]`, `[?(@.type=="Ready")]`); built-in kinds get NAME and AGE only.
"""
from __future__ import annotations

import datetime
import re
from typing import Any

_STEP = re.compile(r'\.([A-Za-z0-9_\-]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_\-]+)\s*==\s*["\']([^"\']*)["\']\)\]')


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def jsonpath(obj: Any, path: str) -> Any:
    """Evaluate a printer-column JSONPath; None when any step is missing."""
    values = [obj]
    for match in _STEP.finditer(path.strip().lstrip("{").rstrip("}")):
        key, index, filter_key, filter_value = match.groups()
        nxt = []
        for value in values:
            if key is not None and isinstance(value, dict) and key in value:
                nxt.append(value[key])
            elif index is not None and isinstance(value, list) and int(index) < len(value):
                nxt.append(value[int(index)])
            elif filter_key is not None and isinstance(value, list):
                nxt += [v for v in value if isinstance(v, dict) and str(v.get(filter_key)) == filter_value]
        values = nxt
    if not values:
        return None
    return values[0] if len(values) == 1 else ",".join(str(v) for v in values)


def age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """`kubectl`'s short duration: 45s, 3m10s, 5h, 2d..."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<invalid>"
    seconds = max(0, int(((now or datetime.datetime.now(tz=datetime.timezone.utc)) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 600:
        return f"{seconds // 60}m{seconds % 60}s"
    if seconds < 3 * 3600:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def render(items: list[dict[str, Any]], printer_columns: list[dict[str, Any]] | None, resource_version: str,
           include_object: str = "Metadata") -> dict[str, Any]:
    columns = printer_columns or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    definitions = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name must be unique within a namespace."}]
    definitions += [{"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                     "description": c.get("description", ""), "priority": c.get("priority", 0)} for c in columns]
    rows = []
    for obj in items:
        cells: list[Any] = [obj.get("metadata", {}).get("name", "")]
        for column in columns:
            value = jsonpath(obj, column["jsonPath"])
            if column.get("type") == "date":
                value = age(value)
            cells.append(value)
        row: dict[str, Any] = {"cells": cells}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj.get("metadata", {})}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": definitions, "rows": rows}
