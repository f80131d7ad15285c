"""Structural-schema checks for custom resources, the way the apiserver applies a CRD's openAPIV3Schema.

Three passes over an object, in the apiserver's order: fill `default`s, prune (or, under
`fieldValidation=Strict`, report) fields the schema does not know, then validate. Validation returns
one cause per bad field with the apiserver's wording, e.g.
`spec.replicas: Invalid value: "two": spec.replicas in body must be of type integer: "two"`.
List types are checked as the apiserver does: duplicates in an `x-kubernetes-list-type: set` list and
duplicate keys in a `map` list are refused (`spec.features[1]: Duplicate value: "amount"`).
Not covered: CEL rules (`x-kubernetes-validations`), `format`, and map-type semantics.
"""
from __future__ import annotations

import copy
import json
import re
from typing import Any

ROOT_FIELDS = {"apiVersion", "kind", "metadata"}


def _go(value: Any) -> str:
    """Render a value the way apiserver messages do (strings quoted, numbers bare)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return "object" if isinstance(value, dict) else "array"
    return json.dumps(value)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_ok(expected: str, value: Any) -> bool:
    actual = _type_name(value)
    return actual == expected or (expected == "number" and actual == "integer") or (
        expected == "integer" and isinstance(value, float) and value.is_integer())


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """Fill in `default` values for absent properties (recursively); returns the same object."""
    if isinstance(obj, dict):
        for key, prop in (schema.get("properties") or {}).items():
            if key not in obj and "default" in prop:
                obj[key] = copy.deepcopy(prop["default"])
            if key in obj:
                apply_defaults(obj[key], prop)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in obj.items():
                if key not in (schema.get("properties") or {}):
                    apply_defaults(value, extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(item, schema["items"])
    return obj


def prune(obj: Any, schema: dict[str, Any], path: str = "", root: bool = True) -> list[str]:
    """Drop fields unknown to the schema, in place; return their paths (for strict field validation)."""
    unknown: list[str] = []
    if isinstance(obj, dict) and schema.get("type", "object") == "object" and not schema.get(
            "x-kubernetes-preserve-unknown-fields"):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key in list(obj):
            child = f"{path}.{key}" if path else key
            if key in properties:
                unknown += prune(obj[key], properties[key], child, root=False)
            elif isinstance(extra, dict):
                unknown += prune(obj[key], extra, child, root=False)
            elif extra is True or (root and key in ROOT_FIELDS):
                continue
            else:
                unknown.append(child)
                del obj[key]
    elif isinstance(obj, dict):
        for key, prop in (schema.get("properties") or {}).items():
            if key in obj:
                unknown += prune(obj[key], prop, f"{path}.{key}" if path else key, root=False)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for number, item in enumerate(obj):
            unknown += prune(item, schema["items"], f"{path}[{number}]", root=False)
    return unknown


def _cause(reason: str, field: str, message: str) -> dict[str, str]:
    return {"reason": reason, "field": field, "message": message}


def validate(obj: Any, schema: dict[str, Any], path: str = "") -> list[dict[str, str]]:
    """Return the list of causes (empty if valid) for `obj` against a structural schema."""
    causes: list[dict[str, str]] = []
    field = path or "<root>"
    if obj is None:
        if schema.get("nullable"):
            return causes
        if "type" in schema:
            return [_cause("FieldValueInvalid", field, f"Invalid value: \"null\": {field} in body must be "
                           f"of type {schema['type']}: \"null\"")]
        return causes
    expected = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(obj, (int, str)) or isinstance(obj, bool):
            return [_cause("FieldValueInvalid", field, f"Invalid value: {_go(obj)}: {field} in body must be "
                           f"of type integer or string: {_go(_type_name(obj))}")]
    elif expected and not _type_ok(expected, obj):
        return [_cause("FieldValueInvalid", field, f"Invalid value: {_go(obj)}: {field} in body must be of "
                       f"type {expected}: {_go(_type_name(obj))}")]
    if "enum" in schema and obj not in schema["enum"]:
        supported = ", ".join(_go(v) for v in schema["enum"])
        causes.append(_cause("FieldValueNotSupported", field,
                             f"Unsupported value: {_go(obj)}: supported values: {supported}"))
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        if "minimum" in schema:
            low = schema["minimum"]
            if obj < low or (schema.get("exclusiveMinimum") is True and obj == low):
                word = "greater than" if schema.get("exclusiveMinimum") is True else "greater than or equal to"
                causes.append(_cause("FieldValueInvalid", field,
                                     f"Invalid value: {_go(obj)}: {field} in body should be {word} {low}"))
        if "maximum" in schema:
            high = schema["maximum"]
            if obj > high or (schema.get("exclusiveMaximum") is True and obj == high):
                word = "less than" if schema.get("exclusiveMaximum") is True else "less than or equal to"
                causes.append(_cause("FieldValueInvalid", field,
                                     f"Invalid value: {_go(obj)}: {field} in body should be {word} {high}"))
        if schema.get("multipleOf") and obj % schema["multipleOf"]:
            causes.append(_cause("FieldValueInvalid", field, f"Invalid value: {_go(obj)}: {field} in body "
                                 f"should be a multiple of {schema['multipleOf']}"))
    if isinstance(obj, str):
        if "maxLength" in schema and len(obj) > schema["maxLength"]:
            causes.append(_cause("FieldValueTooLong", field,
                                 f"Too long: may not be more than {schema['maxLength']} bytes"))
        if "minLength" in schema and len(obj) < schema["minLength"]:
            causes.append(_cause("FieldValueInvalid", field, f"Invalid value: {_go(obj)}: {field} in body "
                                 f"should be at least {schema['minLength']} chars long"))
        if "pattern" in schema and not re.search(schema["pattern"], obj):
            causes.append(_cause("FieldValueInvalid", field, f"Invalid value: {_go(obj)}: {field} in body "
                                 f"should match '{schema['pattern']}'"))
    if isinstance(obj, list):
        if "maxItems" in schema and len(obj) > schema["maxItems"]:
            causes.append(_cause("FieldValueTooMany", field,
                                 f"Too many: {len(obj)}: must have at most {schema['maxItems']} items"))
        if "minItems" in schema and len(obj) < schema["minItems"]:
            causes.append(_cause("FieldValueInvalid", field, f"Invalid value: {len(obj)}: {field} in body "
                                 f"should have at least {schema['minItems']} items"))
        if schema.get("uniqueItems") and len({json.dumps(i, sort_keys=True) for i in obj}) != len(obj):
            causes.append(_cause("FieldValueDuplicate", field, f"Duplicate value: {field} has duplicates"))
        if isinstance(schema.get("items"), dict):
            for number, item in enumerate(obj):
                causes += validate(item, schema["items"], f"{path}[{number}]")
        causes += _list_type_duplicates(obj, schema, path)
    if isinstance(obj, dict):
        properties = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in obj:
                causes.append(_cause("FieldValueRequired", f"{path}.{key}" if path else key, "Required value"))
        for key, value in obj.items():
            child = f"{path}.{key}" if path else key
            if key in properties:
                causes += validate(value, properties[key], child)
            elif isinstance(schema.get("additionalProperties"), dict):
                causes += validate(value, schema["additionalProperties"], child)
        if "maxProperties" in schema and len(obj) > schema["maxProperties"]:
            causes.append(_cause("FieldValueTooMany", field,
                                 f"Too many: {len(obj)}: must have at most {schema['maxProperties']} items"))
    for sub in schema.get("allOf") or []:
        causes += validate(obj, sub, path)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options:
            passing = sum(1 for sub in options if not validate(obj, sub, path))
            if passing == 0 or (key == "oneOf" and passing > 1):
                causes.append(_cause("FieldValueInvalid", field,
                                     f"Invalid value: {_go(obj)}: {field} in body must match {key} schemas"))
    return causes


def _list_type_duplicates(items: list, schema: dict[str, Any], path: str) -> list[dict[str, str]]:
    """`x-kubernetes-list-type: set` items, and `map` items' key fields, must be unique (listtype/validation.go)."""
    list_type = schema.get("x-kubernetes-list-type")
    if list_type not in ("set", "map"):
        return []
    keys = schema.get("x-kubernetes-list-map-keys") or []
    causes, seen = [], set()
    for number, item in enumerate(items):
        if list_type == "map":
            if not isinstance(item, dict):
                continue
            present = {k: item[k] for k in keys if k in item}
            identity = json.dumps(present, sort_keys=True)
            shown = "map[string]interface {}{" + ", ".join(f"{json.dumps(k)}:{_go(v)}" for k, v in present.items()) + "}"
        else:
            identity, shown = json.dumps(item, sort_keys=True), _go(item)
        if identity in seen:
            causes.append(_cause("FieldValueDuplicate", f"{path}[{number}]", f"Duplicate value: {shown}"))
        seen.add(identity)
    return causes
