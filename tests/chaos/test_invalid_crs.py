"""Invalid SelfHealingModels are refused by the API, and the refusal names the field.

The cases are not written by hand: they are generated from the CRD's openAPIV3Schema, so a field added
to operator/crd.py is covered the day it appears. For every field of `spec` (objects, arrays and their
items, map values, leaves) each constraint the schema states gets a value that breaks it: the wrong
type, below `minimum`, above `maximum`, outside `enum`, against `pattern`, too short, too long, too
few or too many items, a duplicate in a set or map list, a required field left out. Each is sent with
the real kubectl (`create --dry-run=server`, so the API validates and stores nothing) and must fail
with stderr naming the field path, e.g. `spec.rules[0].weight`."""
from __future__ import annotations

import copy
import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "selfhealingmodels.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "fraud" / "selfhealingmodel.yaml").read_text())
# Optional lists the example leaves out, with one valid item each: a case that breaks an item's
# field, or leaves out a required one, needs an item to break.
EXAMPLE["spec"]["podTemplate"] = {"imagePullSecrets": [{"name": "regcred"}],
                                  "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml",
                                                   "effect": "NoSchedule"}]}
DELETE = object()

WRONG_TYPE = {"string": 12345, "integer": "seven", "number": "many", "boolean": "yes",
              "array": "not-a-list", "object": ["not", "an", "object"]}
NOT_MATCHING = ["Not Valid!", "-", "UPPER_case", "a/b", "_x", "1abc", "://", "x" * 3]


def dotted(path: list) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def nodes(schema: dict, path: list) -> Iterator[tuple[list, dict]]:
    """Every field below `schema` with its path; array items at index 0, map values under key `cpu`."""
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from nodes(sub, path + [key])
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], path + ["cpu"])
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], path + [0])


def valid_item(schema: dict, i: int) -> Any:
    """The i-th of distinct valid items for an array (features, classes, rules)."""
    if schema.get("type") == "object":
        return {"name": f"r{i}", "when": "true", "label": "fraud"}
    return f"f{i}"


def cases() -> Iterator[tuple[str, list, Any]]:
    """(what, path, value) for every constraint of every field; value DELETE removes the field."""
    for path, schema in nodes(SCHEMA["properties"]["spec"], ["spec"]):
        kind = schema.get("type")
        if schema.get("x-kubernetes-int-or-string"):
            yield "wrong type", path, [1]
        elif kind:
            yield "wrong type", path, WRONG_TYPE[kind]
            if kind == "integer":
                yield "wrong type", path, 2.5
        if "minimum" in schema:
            low = schema["minimum"]
            yield "below minimum", path, low if schema.get("exclusiveMinimum") else (
                low - 1 if kind == "integer" else low - 0.5)
        if "maximum" in schema:
            high = schema["maximum"]
            yield "above maximum", path, high + 1 if kind == "integer" else high + 0.5
        if "enum" in schema:
            yield "not in enum", path, "NotAnOption"
        if "pattern" in schema:
            longest = schema.get("maxLength", 10 ** 6)
            bad = next(v for v in NOT_MATCHING if not re.search(schema["pattern"], v) and len(v) <= longest)
            yield "against pattern", path, bad
        if schema.get("minLength"):
            yield "too short", path, ""
        if "maxLength" in schema:
            yield "too long", path, "a" * (schema["maxLength"] + 1)
        if kind == "array":
            items = schema["items"]
            if schema.get("minItems"):
                yield "too few items", path, [valid_item(items, i) for i in range(schema["minItems"] - 1)]
            if "maxItems" in schema:
                yield "too many items", path, [valid_item(items, i) for i in range(schema["maxItems"] + 1)]
            if schema.get("x-kubernetes-list-type") in ("set", "map"):
                yield "duplicate item", path + [1], DUPLICATE
        for key in schema.get("required") or []:
            yield "missing required", path + [key], DELETE


DUPLICATE = object()   # replaced by a copy of item 0 of the same list


def mutated(path: list, value: Any) -> dict:
    resource = copy.deepcopy(EXAMPLE)
    resource["metadata"]["name"] = "invalid"
    node = resource
    for part, following in zip(path[:-1], path[1:]):
        if isinstance(part, int):
            while len(node) <= part:   # a list the example leaves out (e.g. podTemplate's)
                node.append({})
            node = node[part]
        else:
            node = node.setdefault(part, [] if isinstance(following, int) else {})
    last = path[-1]
    if value is DELETE:
        del node[last]
    elif value is DUPLICATE:
        node[last] = copy.deepcopy(node[0])
    elif isinstance(last, int):
        while len(node) <= last:
            node.append({})
        node[last] = value
    else:
        node[last] = value
    return resource


ALL_CASES = list(cases())


def test_the_generated_cases_cover_every_kind_of_constraint():
    """The generator must find what the schema says, or the test below would pass by testing little."""
    kinds = Counter(what for what, _, _ in ALL_CASES)
    assert set(kinds) == {"wrong type", "below minimum", "above maximum", "not in enum", "against pattern",
                          "too short", "too long", "too few items", "too many items", "duplicate item",
                          "missing required"}, kinds
    paths = {dotted(path) for _, path, _ in ALL_CASES}
    for field in ("spec.replicas", "spec.rules[0].weight", "spec.features[0]", "spec.healing.mode",
                  "spec.promotion.rollback.automatic", "spec.resources.requests.cpu", "spec.storage.secretName",
                  "spec.healing.objective.minTrust", "spec.model.archive", "spec.serving.sampleFraction"):
        assert field in paths, field
    assert len(ALL_CASES) > 150


def test_every_invalid_resource_is_refused_naming_the_field(sandbox, namespace):
    def create(resource: dict):
        return sandbox.kubectl("create", "--dry-run=server", "-n", namespace, "-o", "name", "-f", "-",
                               input=json.dumps(resource), check=False)

    control = create(mutated(["metadata", "name"], "invalid"))
    assert control.returncode == 0, f"the unmodified example is refused: {control.stderr}"

    def attempt(case):
        what, path, value = case
        result = create(mutated(path, value))
        field = dotted(path)
        if result.returncode == 0:
            return f"{what} at {field} ({value!r:.60}): accepted"
        if field not in result.stderr:
            return f"{what} at {field} ({value!r:.60}): refused without naming the field: {result.stderr.strip()[:300]}"
        return None

    with ThreadPoolExecutor(4) as pool:
        problems = [p for p in pool.map(attempt, ALL_CASES) if p]
    assert not problems, f"{len(problems)} of {len(ALL_CASES)} invalid resources:\n" + "\n".join(problems)
