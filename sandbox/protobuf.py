"""Decode the Kubernetes protobuf request bodies that real clients send for a few built-in kinds.

client-go's typed clients (helm's release Secrets, `kubectl create ns|secret|configmap`, typed
deletes) send `application/vnd.kubernetes.protobuf`: the magic `k8s\\0`, then a `runtime.Unknown`
envelope {typeMeta=1, raw=2} whose `raw` is the object's own message. Only the kinds listed in
`KINDS` are understood (field numbers from k8s.io/api generated.proto); others get a clear 415.
"""
from __future__ import annotations

import base64
import datetime
from typing import Any

from sandbox import apierrors

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

# field number -> (json name, type); types: string, bytes, int, bool, time, strings (repeated),
# map (string->string), bytesmap (string->bytes, base64 in JSON), or a nested schema name; "[]" = repeated.
SCHEMAS: dict[str, dict[int, tuple[str, str]]] = {
    "TypeMeta": {1: ("apiVersion", "string"), 2: ("kind", "string")},
    "Unknown": {1: ("typeMeta", "TypeMeta"), 2: ("raw", "bytes"), 3: ("contentEncoding", "string"),
                4: ("contentType", "string")},
    "Time": {1: ("seconds", "int"), 2: ("nanos", "int")},
    "OwnerReference": {1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                       5: ("apiVersion", "string"), 6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")},
    "ObjectMeta": {1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
                   5: ("uid", "string"), 6: ("resourceVersion", "string"), 7: ("generation", "int"),
                   8: ("creationTimestamp", "time"), 9: ("deletionTimestamp", "time"),
                   10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", "map"), 12: ("annotations", "map"),
                   13: ("ownerReferences", "OwnerReference[]"), 14: ("finalizers", "strings")},
    "Secret": {1: ("metadata", "ObjectMeta"), 2: ("data", "bytesmap"), 3: ("type", "string"),
               4: ("stringData", "map"), 5: ("immutable", "bool")},
    "ConfigMap": {1: ("metadata", "ObjectMeta"), 2: ("data", "map"), 3: ("binaryData", "bytesmap"),
                  4: ("immutable", "bool")},
    "NamespaceSpec": {1: ("finalizers", "strings")},
    "NamespaceStatus": {1: ("phase", "string")},
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec"), 3: ("status", "NamespaceStatus")},
    "Preconditions": {1: ("uid", "string"), 2: ("resourceVersion", "string")},
    "DeleteOptions": {1: ("gracePeriodSeconds", "int"), 2: ("preconditions", "Preconditions"),
                      3: ("orphanDependents", "bool"), 4: ("propagationPolicy", "string"),
                      5: ("dryRun", "strings")},
}
KINDS = ("Secret", "ConfigMap", "Namespace", "DeleteOptions")


class ProtobufError(ValueError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, Any]]:
    """Raw (field number, value) pairs: ints for varints, bytes for length-delimited fields."""
    fields, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError(f"field {number} claims {length} bytes but only {len(data) - pos} remain")
            value, pos = data[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = int.from_bytes(data[pos:pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(data[pos:pos + 4], "little"), pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        fields.append((number, value))
    return fields


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_message(data: bytes, schema_name: str) -> dict[str, Any]:
    schema = SCHEMAS[schema_name]
    result: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in schema:
            continue  # fields we do not model (e.g. managedFields) are dropped, as a real decoder of an old schema would
        name, kind = schema[number]
        if kind == "string":
            result[name] = value.decode("utf-8")
        elif kind == "bytes":
            result[name] = value
        elif kind == "int":
            result[name] = _signed(value)
        elif kind == "bool":
            result[name] = bool(value)
        elif kind == "strings":
            result.setdefault(name, []).append(value.decode("utf-8"))
        elif kind == "time":
            seconds = decode_message(value, "Time").get("seconds", 0)
            stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
            result[name] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        elif kind in ("map", "bytesmap"):
            entry = dict(_fields(value))
            key = entry.get(1, b"").decode("utf-8")
            raw = entry.get(2, b"")
            result.setdefault(name, {})[key] = (base64.b64encode(raw).decode() if kind == "bytesmap"
                                                else raw.decode("utf-8"))
        elif kind.endswith("[]"):
            result.setdefault(name, []).append(decode_message(value, kind[:-2]))
        else:
            result[name] = decode_message(value, kind)
    return result


def decode_body(body: bytes) -> dict[str, Any]:
    """Turn a protobuf request body into the equivalent JSON object (with apiVersion and kind)."""
    if not body.startswith(MAGIC):
        raise apierrors.unsupported_media_type(CONTENT_TYPE, "the body lacks the 'k8s\\0' magic prefix")
    try:
        envelope = decode_message(body[len(MAGIC):], "Unknown")
        type_meta = envelope.get("typeMeta", {})
        kind = type_meta.get("kind", "")
        if kind not in KINDS:
            raise apierrors.unsupported_media_type(
                CONTENT_TYPE, f"kind {kind!r} cannot be decoded from protobuf here (known: {', '.join(KINDS)}); "
                              "send it as application/json")
        obj = decode_message(envelope.get("raw", b""), kind)
    except ProtobufError as exc:
        raise apierrors.bad_request(f"malformed protobuf body: {exc}") from exc
    return {"apiVersion": type_meta.get("apiVersion", "v1"), "kind": kind, **obj}
