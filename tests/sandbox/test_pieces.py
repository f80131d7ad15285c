"""The emulator's pure parts on their own: paths, selectors, patches, schemas, tables, protobuf."""
from __future__ import annotations

import pytest

from sandbox import apierrors, patches, protobuf, schema, selectors, tables
from sandbox.paths import ApiPath, parse_api_path


@pytest.mark.parametrize("path, expected", [
    ("/api/v1/namespaces", ApiPath("", "v1", "namespaces")),
    ("/api/v1/namespaces/ns1", ApiPath("", "v1", "namespaces", None, "ns1")),
    ("/api/v1/namespaces/ns1/status", ApiPath("", "v1", "namespaces", None, "ns1", "status")),
    ("/api/v1/namespaces/ns1/pods", ApiPath("", "v1", "pods", "ns1")),
    ("/api/v1/namespaces/ns1/pods/p/status", ApiPath("", "v1", "pods", "ns1", "p", "status")),
    ("/apis/apps/v1/deployments", ApiPath("apps", "v1", "deployments")),
    ("/apis/apps/v1", ApiPath("apps", "v1")),
    ("/api/v1", ApiPath("", "v1")),
    ("/apis/apps", None),
    ("/version", None),
])
def test_parse_api_path(path, expected):
    assert parse_api_path(path) == expected


@pytest.mark.parametrize("selector, labels, matches", [
    ("a=b", {"a": "b"}, True), ("a==b", {"a": "c"}, False), ("a!=b", {}, True),
    ("a in (x, y)", {"a": "y"}, True), ("a notin (x,y)", {"a": "x"}, False), ("a notin (x)", {}, True),
    ("a", {"a": ""}, True), ("!a", {"a": "1"}, False), ("a=b,c in (d),!e", {"a": "b", "c": "d"}, True),
    ("owner=helm,name=g1", {"owner": "helm", "name": "g2"}, False), ("", {"x": "y"}, True),
])
def test_label_selectors(selector, labels, matches):
    assert selectors.parse_label_selector(selector)(labels) is matches


def test_bad_selector_is_a_400_naming_the_term():
    with pytest.raises(apierrors.ApiError) as info:
        selectors.parse_label_selector("a=b,=c")
    assert info.value.status == 400 and "'=c'" in info.value.message


def test_field_selector():
    match = selectors.parse_field_selector("metadata.name=x,status.phase!=Done")
    assert match({"metadata": {"name": "x"}, "status": {"phase": "Running"}})
    assert not match({"metadata": {"name": "x"}, "status": {"phase": "Done"}})


def test_merge_patch_deletes_with_null_and_replaces_lists():
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert patches.merge_patch(target, {"a": {"b": None, "d": 3}, "l": [3]}) == {"a": {"c": 2, "d": 3}, "l": [3]}
    assert target == {"a": {"b": 1, "c": 2}, "l": [1, 2]}  # inputs are never mutated


def test_strategic_merge_patch_merges_named_lists_and_honours_directives():
    target = {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}
    patched = patches.strategic_merge_patch(target, {
        "$setElementOrder/containers": [{"name": "a"}],
        "containers": [{"name": "a", "image": "z"}, {"name": "b", "$patch": "delete"}, {"name": "c"}]})
    assert patched == {"containers": [{"name": "a", "image": "z"}, {"name": "c"}]}
    assert patches.strategic_merge_patch({"m": {"x": 1}}, {"m": {"$patch": "replace", "y": 2}}) == {"m": {"y": 2}}


def test_json_patch_operations():
    doc = {"a": [1, 2], "b": {"c": "d"}}
    result = patches.json_patch(doc, [
        {"op": "add", "path": "/a/-", "value": 3}, {"op": "add", "path": "/a/0", "value": 0},
        {"op": "move", "from": "/b/c", "path": "/e"}, {"op": "copy", "from": "/e", "path": "/f"},
        {"op": "remove", "path": "/b"}, {"op": "replace", "path": "/e", "value": "x"},
        {"op": "test", "path": "/f", "value": "d"}, {"op": "add", "path": "/g~1h", "value": 1}])
    assert result == {"a": [0, 1, 2, 3], "e": "x", "f": "d", "g/h": 1}


@pytest.mark.parametrize("ops, status, words", [
    ([{"op": "test", "path": "/a", "value": 2}], 422, "test failed"),
    ([{"op": "remove", "path": "/zz"}], 422, "does not exist"),
    ([{"op": "replace", "path": "/a"}], 400, "needs 'value'"),
    ([{"op": "frobnicate", "path": "/a"}], 400, "unknown op"),
    ({"op": "add"}, 400, "list of operations"),
])
def test_json_patch_errors(ops, status, words):
    with pytest.raises(apierrors.ApiError) as info:
        patches.json_patch({"a": 1}, ops)
    assert info.value.status == status and words in info.value.message


SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1},
            "mode": {"type": "string", "enum": ["Auto", "Off"], "default": "Auto"},
            "port": {"x-kubernetes-int-or-string": True},
            "note": {"type": "string", "nullable": True, "maxLength": 3},
            "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "pattern": "^[a-z]+$"}},
            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "knobs": {"type": "object", "properties": {"depth": {"type": "integer", "default": 2}}, "default": {}},
        }},
    },
}


def test_schema_defaults_prune_and_validate():
    obj = {"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"},
           "spec": {"size": 1, "port": "http", "note": None, "extra": {"any": 1}, "typo": True}, "junk": 1}
    schema.apply_defaults(obj, SCHEMA)
    assert obj["spec"]["mode"] == "Auto" and obj["spec"]["knobs"] == {"depth": 2}
    assert schema.prune(obj, SCHEMA) == ["spec.typo", "junk"]
    assert "typo" not in obj["spec"] and obj["spec"]["extra"] == {"any": 1} and obj["metadata"] == {"name": "n"}
    assert schema.validate(obj, SCHEMA) == []


def test_schema_validation_messages_name_the_fields():
    obj = {"spec": {"size": 0, "mode": "On", "port": 1.5, "note": "long", "tags": ["ok", "Bad", "x"]}}
    causes = {c["field"]: c["message"] for c in schema.validate(obj, SCHEMA)}
    assert causes == {
        "spec.size": "Invalid value: 0: spec.size in body should be greater than or equal to 1",
        "spec.mode": 'Unsupported value: "On": supported values: "Auto", "Off"',
        "spec.port": 'Invalid value: 1.5: spec.port in body must be of type integer or string: "number"',
        "spec.note": "Too long: may not be more than 3 bytes",
        "spec.tags": "Too many: 3: must have at most 2 items",
        "spec.tags[1]": 'Invalid value: "Bad": spec.tags[1] in body should match \'^[a-z]+$\'',
    }
    assert schema.validate({"spec": {}}, SCHEMA) == [
        {"reason": "FieldValueRequired", "field": "spec.size", "message": "Required value"}]
    assert schema.validate({"spec": {"size": "3"}}, SCHEMA)[0]["message"].endswith('must be of type integer: "string"')


def test_table_rendering_with_printer_columns():
    obj = {"metadata": {"name": "n", "creationTimestamp": "2020-01-01T00:00:00Z"},
           "status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}}
    table = tables.render([obj], [{"name": "Ready", "type": "string",
                                   "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                                  {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}], "5")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Ready", "Age"]
    assert table["rows"][0]["cells"][:2] == ["n", "True"] and table["rows"][0]["cells"][2].endswith("d")
    assert tables.jsonpath(obj, ".status.conditions[0].type") == "A"
    assert tables.jsonpath(obj, ".spec.missing") is None


def test_protobuf_garbage_is_a_clear_error():
    with pytest.raises(apierrors.ApiError) as info:
        protobuf.decode_body(b'{"json": "not protobuf"}')
    assert info.value.status == 415 and "magic" in info.value.message
    with pytest.raises(apierrors.ApiError) as info:
        protobuf.decode_body(b"k8s\x00\x0a\xff")
    assert info.value.status == 400 and "malformed protobuf" in info.value.message
    with pytest.raises(apierrors.ApiError) as info:
        protobuf.decode_body(b"k8s\x00\x0a\x05ab")
    assert info.value.status == 400 and "claims 5 bytes but only 2 remain" in info.value.message


def test_schema_refuses_duplicates_in_set_and_map_lists():
    """As the apiserver's listtype validation does; found missing by tests/chaos/test_invalid_crs.py."""
    lists = {"type": "object", "properties": {
        "names": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "rules": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                  "items": {"type": "object", "properties": {"name": {"type": "string"}, "w": {"type": "integer"}}}},
        "plain": {"type": "array", "items": {"type": "string"}},
    }}
    obj = {"names": ["a", "b", "a"], "rules": [{"name": "x", "w": 1}, {"name": "x", "w": 2}], "plain": ["a", "a"]}
    assert schema.validate(obj, lists) == [
        {"reason": "FieldValueDuplicate", "field": "names[2]", "message": 'Duplicate value: "a"'},
        {"reason": "FieldValueDuplicate", "field": "rules[1]",
         "message": 'Duplicate value: map[string]interface {}{"name":"x"}'},
    ]
    assert schema.validate({"names": ["a", "b"], "rules": [{"name": "x"}, {"name": "y"}]}, lists) == []
