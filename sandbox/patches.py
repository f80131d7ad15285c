"""The four PATCH flavours a real apiserver accepts, applied to plain JSON dicts.

- JSON merge patch (RFC 7386): dicts merge, `null` deletes, lists replace.
- JSON patch (RFC 6902): add/remove/replace/move/copy/test; a failed `test` is a 422 (Kopf retries it).
- Strategic merge patch: merge patch where lists of objects with a `name` merge by name, plus the
  `$patch: delete|replace` and `$setElementOrder`/`$retainKeys` directives (approximation: real
  merge keys come from Go struct tags; `name` covers containers, ports, volumes, env, ...).
- Server-side apply: the applied configuration is merged in like a strategic merge patch (field
  ownership and removal of fields dropped from the applied config are not tracked).
"""
from __future__ import annotations

import copy
from typing import Any

from sandbox import apierrors


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _merge_by_name(target: list[Any], patch: list[Any]) -> list[Any] | None:
    """Merge two lists of `{name: ...}` dicts element-wise; None if they are not such lists."""
    if not all(isinstance(i, dict) and "name" in i for i in patch):
        return None
    if not all(isinstance(i, dict) and "name" in i for i in target):
        return None
    result = [copy.deepcopy(i) for i in target]
    index = {item["name"]: pos for pos, item in enumerate(result)}
    for item in patch:
        directive = item.get("$patch")
        if directive == "delete":
            if item["name"] in index:
                result[index.pop(item["name"])] = None
            continue
        if item["name"] in index:
            result[index[item["name"]]] = strategic_merge_patch(result[index[item["name"]]], item)
        else:
            index[item["name"]] = len(result)
            result.append(strategic_merge_patch({}, item))
    return [i for i in result if i is not None]


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):  # $setElementOrder/..., $retainKeys, $patch: ordering hints only
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field, []) if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            merged = _merge_by_name(result[key], value)
            result[key] = merged if merged is not None else copy.deepcopy(value)
        elif isinstance(value, list):
            result[key] = [strategic_merge_patch({}, i) if isinstance(i, dict) else i for i in value
                           if not (isinstance(i, dict) and i.get("$patch") == "delete")]
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def apply_patch(target: Any, applied: Any) -> Any:
    """Server-side apply, simplified: merge the applied configuration into the live object."""
    return strategic_merge_patch(target, applied)


# --- RFC 6902 -------------------------------------------------------------------------------------------

def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise apierrors.unprocessable_patch(f"JSON patch path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise apierrors.unprocessable_patch(f"JSON patch path {path!r} does not exist")
    return doc


def _add(doc: Any, parts: list[str], value: Any, path: str) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1], path)
    key = parts[-1]
    if isinstance(parent, dict):
        parent[key] = value
    elif isinstance(parent, list):
        if key == "-":
            parent.append(value)
        elif key.isdigit() and int(key) <= len(parent):
            parent.insert(int(key), value)
        else:
            raise apierrors.unprocessable_patch(f"JSON patch index {key!r} out of range in {path!r}")
    else:
        raise apierrors.unprocessable_patch(f"JSON patch path {path!r} has no container to add into")
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> Any:
    if not parts:
        raise apierrors.unprocessable_patch("JSON patch cannot remove the whole document")
    parent = _resolve(doc, parts[:-1], path)
    key = parts[-1]
    if isinstance(parent, dict) and key in parent:
        return parent.pop(key)
    if isinstance(parent, list) and key.isdigit() and int(key) < len(parent):
        return parent.pop(int(key))
    raise apierrors.unprocessable_patch(f"JSON patch path {path!r} does not exist")


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise apierrors.bad_request("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for number, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise apierrors.bad_request(f"JSON patch operation #{number} needs 'op' and 'path': {op!r}")
        kind, path = op["op"], op["path"]
        parts = _pointer(path)
        if kind in ("add", "replace", "test") and "value" not in op:
            raise apierrors.bad_request(f"JSON patch operation #{number} ({kind} {path}) needs 'value'")
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op["value"]), path)
        elif kind == "remove":
            _remove(doc, parts, path)
        elif kind == "replace":
            _resolve(doc, parts, path)  # must exist
            if parts:
                _remove(doc, parts, path)
            doc = _add(doc, parts, copy.deepcopy(op["value"]), path)
        elif kind in ("move", "copy"):
            source = op.get("from")
            if source is None:
                raise apierrors.bad_request(f"JSON patch operation #{number} ({kind}) needs 'from'")
            from_parts = _pointer(source)
            value = (_remove(doc, from_parts, source) if kind == "move"
                     else copy.deepcopy(_resolve(doc, from_parts, source)))
            doc = _add(doc, parts, value, path)
        elif kind == "test":
            actual = _resolve(doc, parts, path)
            if actual != op["value"]:
                raise apierrors.unprocessable_patch(
                    f"the JSON patch test failed: {path} is {actual!r}, not {op['value']!r}")
        else:
            raise apierrors.bad_request(f"JSON patch operation #{number} has unknown op {kind!r}")
    return doc
