"""The SelfHealingModel CRD: generated, valid for Kubernetes, and in agreement with its Pydantic models.

Custom resources are checked twice: by an offline stand-in for the API server's validation (the
CRD's openAPIV3Schema through `jsonschema`, with the Kubernetes extensions the API server applies:
`nullable`, int-or-string, list types, unknown fields rejected as kubectl's strict field validation
does), and by `SelfHealingModel.model_validate`, which the operator uses. Both must name the field.
"""
from __future__ import annotations

import copy
import datetime
import subprocess
import sys
from collections import deque
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from examples.fraud import generator
from model_handler import drift, gate, healing, rules
from shm_operator import crd, decisions

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "selfhealingmodels.yaml"
EXAMPLE_FILE = ROOT / "examples" / "fraud" / "selfhealingmodel.yaml"
PY = [sys.executable, "-m", "shm_operator.crd"]


def committed_crd() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())


def openapi_schema() -> dict:
    (version,) = committed_crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def example() -> dict:
    return yaml.safe_load(EXAMPLE_FILE.read_text())


# ---- an offline stand-in for the API server's validation of custom resources -------------------

def _type(validator, types, instance, schema):
    if instance is None and schema.get("nullable"):
        return
    yield from jsonschema.Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)


def _enum(validator, enums, instance, schema):
    if instance is None and schema.get("nullable"):
        return
    yield from jsonschema.Draft4Validator.VALIDATORS["enum"](validator, enums, instance, schema)


def _properties(validator, properties, instance, schema):
    yield from jsonschema.Draft4Validator.VALIDATORS["properties"](validator, properties, instance, schema)
    if isinstance(instance, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key in instance.keys() - properties.keys():
            yield jsonschema.ValidationError(f"unknown field {key!r}", path=deque([key]))


def _int_or_string(validator, enabled, instance, schema):
    if enabled and (isinstance(instance, bool) or not isinstance(instance, (int, str))):
        yield jsonschema.ValidationError(f"{instance!r} is neither an integer nor a string")


def _list_type(validator, list_type, instance, schema):
    if not isinstance(instance, list):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen = set()
    for index, item in enumerate(instance):
        key = tuple(item.get(k) for k in keys) if list_type == "map" and isinstance(item, dict) else repr(item)
        if list_type in ("set", "map") and key in seen:
            shown = ", ".join(map(repr, key)) if isinstance(key, tuple) else key
            yield jsonschema.ValidationError(f"duplicate value {shown}", path=deque([index]))
        seen.add(key)


ApiServerValidator = jsonschema.validators.extend(jsonschema.Draft4Validator, {
    "type": _type, "enum": _enum, "properties": _properties,
    "x-kubernetes-int-or-string": _int_or_string, "x-kubernetes-list-type": _list_type})


def dotted(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def schema_errors(resource: dict) -> list[str]:
    """'<field path>: <message>' for every violation; a missing required field is named itself."""
    body = {k: v for k, v in resource.items() if k not in ("apiVersion", "kind", "metadata")}
    found = []
    for error in ApiServerValidator(openapi_schema()).iter_errors(body):
        path = list(error.absolute_path)
        if error.validator == "required":
            path += sorted(set(error.validator_value) - set(error.instance))[:1]
        found.append(f"{dotted(path)}: {error.message}")
    return sorted(found)


def pydantic_errors(resource: dict) -> list[str]:
    try:
        crd.SelfHealingModel.model_validate(resource)
    except ValidationError as error:
        return sorted(f"{dotted(e['loc'])}: {e['msg']}" for e in error.errors())
    return []


# ---- the generated CRD -------------------------------------------------------------------------

def test_committed_crd_is_the_generated_one():
    assert CRD_FILE.read_text() == crd.crd_yaml(), \
        "crds/selfhealingmodels.yaml is stale: run python -m shm_operator.crd -o crds/selfhealingmodels.yaml"


def test_generator_cli_prints_writes_and_checks(tmp_path):
    printed = subprocess.run(PY, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert printed == CRD_FILE.read_text()
    subprocess.run([*PY, "--write"], check=True, cwd=tmp_path)
    assert (tmp_path / "crds" / "selfhealingmodels.yaml").read_text() == printed
    target = tmp_path / "out" / "crd.yaml"
    subprocess.run([*PY, "-o", str(target)], check=True, cwd=tmp_path)
    assert target.read_text() == printed
    assert subprocess.run([*PY, "--check", str(target)], cwd=tmp_path).returncode == 0
    target.write_text(printed.replace("maxItems: 256", "maxItems: 257", 1))
    stale = subprocess.run([*PY, "--check", str(target)], capture_output=True, text=True, cwd=tmp_path)
    assert stale.returncode == 1 and "stale" in stale.stderr


@pytest.mark.parametrize("kubernetes_version", ["1.30.0", "1.37.0"])
def test_crd_is_a_valid_custom_resource_definition(kubernetes_version):
    kubernetes_validate.validate(committed_crd(), kubernetes_version, strict=True)


def test_kubernetes_validate_rejects_a_broken_crd():
    """The check above can fail: a misspelt key in the CRD is refused."""
    broken = committed_crd()
    broken["spec"]["versions"][0]["subresource"] = broken["spec"]["versions"][0].pop("subresources")
    with pytest.raises(kubernetes_validate.ValidationError, match="subresource"):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


def test_crd_names_scope_and_subresources():
    spec = committed_crd()["spec"]
    assert spec["group"] == "selfheal.io" and spec["scope"] == "Namespaced"
    assert spec["names"] == {"kind": "SelfHealingModel", "singular": "selfhealingmodel",
                             "plural": "selfhealingmodels", "shortNames": ["shm"], "categories": []}
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    # `kubectl scale shm/NAME --replicas=N` (and an HPA) go through /scale onto spec.replicas
    assert version["subresources"] == {"status": {}, "scale": {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}}
    status = openapi_schema()["properties"]["status"]["properties"]
    assert status["replicas"]["type"] == "integer" and status["selector"]["type"] == "string"


def walk(schema: dict, path: str = ""):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")


def test_schema_is_structural():
    """What the API server demands of a CRD schema beyond its JSON shape (structural schemas)."""
    for path, node in walk(openapi_schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not {"$ref", "$defs", "title", "default", "anyOf", "allOf", "oneOf", "uniqueItems"} & node.keys(), path
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("x-kubernetes-list-type") == "map":
            assert set(node["x-kubernetes-list-map-keys"]) <= set(node["items"]["required"]), path


def test_every_field_is_described_for_kubectl_explain():
    for path, node in walk(openapi_schema()):
        if path.count(".") >= 1 and not path.endswith(("[]", ".*")):
            assert node.get("description"), f"{path} has no description"
            assert "\n" not in node["description"].replace("\n\n", ""), f"{path}: wrapped docstring"


def test_explain_text_names_each_default():
    props = openapi_schema()["properties"]["spec"]["properties"]
    assert props["replicas"]["description"].endswith("Default: 2.")
    assert props["healing"]["properties"]["mode"]["description"].endswith("Default: Auto.")
    assert props["promotion"]["properties"]["strategy"]["description"].endswith("Default: RollingRestart.")
    assert props["storage"]["properties"]["uri"]["description"].endswith(
        f"Default: the operator's $SELFHEAL_STORAGE_URI (the chart's storage.uri), else {crd.DEFAULT_STORAGE_URI}.")


def test_storage_uri_defaults_to_the_operators_setting(monkeypatch):
    """The chart's storage.uri reaches the operator as $SELFHEAL_STORAGE_URI: models without
    spec.storage (or without its uri) use it; one that names its own keeps it."""
    from shm_operator.status import full_spec
    spec = yaml.safe_load(EXAMPLE_FILE.read_text())["spec"]
    spec.pop("storage", None)
    monkeypatch.delenv("SELFHEAL_STORAGE_URI", raising=False)
    assert full_spec(spec)["storage"]["uri"] == crd.DEFAULT_STORAGE_URI == "file:///var/lib/selfheal"
    monkeypatch.setenv("SELFHEAL_STORAGE_URI", "s3://team-bucket/selfheal")
    assert full_spec(spec)["storage"]["uri"] == "s3://team-bucket/selfheal"
    assert full_spec({**spec, "storage": {"secretName": "s3-creds"}})["storage"] == {
        "uri": "s3://team-bucket/selfheal", "secretName": "s3-creds"}
    assert full_spec({**spec, "storage": {"uri": "gs://own/prefix"}})["storage"]["uri"] == "gs://own/prefix"
    monkeypatch.setenv("SELFHEAL_STORAGE_URI", "  ")
    assert full_spec(spec)["storage"]["uri"] == crd.DEFAULT_STORAGE_URI


@pytest.mark.parametrize("archive, ok", [
    ("/var/lib/models/fraud", True), ("models/fraud.mar", True), ("s3://bucket/models/fraud", True),
    ("gs://b/fraud.mar", True), ("file:///srv/fraud", True), ("pvc://models/fraud", True),
    ("pvc://models/team/fraud.mar", True), ("pvc://models", False), ("pvc://models/", False),
    ("pvc://Bad_Claim/fraud", False), ("://nothing", False)])
def test_archive_is_a_path_a_uri_or_a_pvc(archive, ok):
    spec = {**yaml.safe_load(EXAMPLE_FILE.read_text())["spec"]}
    spec["model"] = {**spec["model"], "archive": archive}
    problems = [p for p in decisions.validate_spec_semantics(spec) if p.startswith("spec.model.archive")]
    assert (problems == []) is ok, problems


def test_printer_columns_point_at_fields_of_the_schema():
    (version,) = committed_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns)[:4] == ["Adapter", "Phase", "Drift", "Ready"] and list(columns)[-1] == "Age"
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    assert columns["URL"]["jsonPath"] == ".status.url" and not columns["URL"].get("priority")
    paths = {path for path, _ in walk(openapi_schema())}
    for column in columns.values():
        if column["name"] != "Age":
            assert column["jsonPath"] in paths, column


# ---- the example and invalid resources ---------------------------------------------------------

def test_example_matches_the_fraud_generator_and_its_rules():
    spec = example()["spec"]
    assert spec["features"] == generator.FEATURES and spec["classes"] == generator.CLASSES
    assert spec["rules"] == yaml.safe_load(generator.RULES_FILE.read_text())["rules"]


def test_example_is_valid_for_the_schema_and_the_model():
    assert schema_errors(example()) == []
    model = crd.SelfHealingModel.model_validate(example())
    assert model.spec.healing.mode is crd.HealingMode.AUTO and len(model.spec.rules) == 6
    assert model.torchserve_name == "fraud"


def _set(path: str, value):
    def mutate(resource):
        *parents, last = path.split(".")
        node = resource
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is DELETE:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


DELETE = object()
INVALID = [
    ("wrong enum", "spec.healing.mode", "Sometimes", "spec.healing.mode"),
    ("negative replicas", "spec.replicas", -1, "spec.replicas"),
    ("replicas not a number", "spec.replicas", "two", "spec.replicas"),
    ("bad adapter version", "spec.adapter.version", "V1_final", "spec.adapter.version"),
    ("missing archive", "spec.model.archive", DELETE, "spec.model.archive"),
    ("missing features", "spec.features", DELETE, "spec.features"),
    ("one class only", "spec.classes", ["fraud"], "spec.classes"),
    ("feature not an identifier", "spec.features.1", "hour-of-day", "spec.features[1]"),
    ("duplicate feature", "spec.features.1", "amount", "spec.features"),
    ("zero rule weight", "spec.rules.2.weight", 0, "spec.rules[2].weight"),
    ("empty rule condition", "spec.rules.0.when", "", "spec.rules[0].when"),
    ("rule condition too long", "spec.rules.0.when", "amount > 1 or " * 200 + "true", "spec.rules[0].when"),
    ("duplicate rule name", "spec.rules.1.name", "big_new_merchant", "spec.rules"),
    ("conflict threshold above 1", "spec.drift.conflictOn", 1.5, "spec.drift.conflictOn"),
    ("misspelt field", "spec.drift.windowRow", 500, "spec.drift.windowRow"),
    ("storage without scheme", "spec.storage.uri", "/var/lib/selfheal", "spec.storage.uri"),
    ("rollback watch is a string", "spec.promotion.rollback.watchSeconds", "10m",
     "spec.promotion.rollback.watchSeconds"),
    ("bad secret name", "spec.storage.secretName", "Storage_Creds", "spec.storage.secretName"),
    ("resource quantity a list", "spec.resources.requests.cpu", ["1"], "spec.resources.requests.cpu"),
]


@pytest.mark.parametrize("case, path, value, field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_resources_are_rejected_naming_the_field(case, path, value, field):
    resource = example()
    _set(path, value)(resource)
    for checker in (schema_errors, pydantic_errors):
        errors = checker(resource)
        assert errors, f"{checker.__name__} accepted {case}"
        assert any(e.startswith((field + ":", field + "[", field + ".")) for e in errors), (checker.__name__, errors)


def test_a_typo_at_the_top_of_spec_is_rejected_too():
    resource = example()
    resource["spec"]["replica"] = 3
    assert schema_errors(resource) == ["spec.replica: unknown field 'replica'"]
    assert pydantic_errors(resource) == ["spec.replica: Extra inputs are not permitted"]


# ---- defaults and round trips ------------------------------------------------------------------

MINIMAL = {"apiVersion": "selfheal.io/v1alpha1", "kind": "SelfHealingModel",
           "metadata": {"name": "tiny.v2", "namespace": "ml"},
           "spec": {"model": {"archive": "s3://models/tiny"}, "features": ["a", "b"], "classes": ["no", "yes"]}}


def test_minimal_resource_gets_every_default():
    assert schema_errors(MINIMAL) == []
    spec = crd.SelfHealingModel.model_validate(MINIMAL).spec
    assert spec.replicas == 2 and spec.rules == [] and spec.adapter.version == "base"
    assert spec.model.image == crd.DEFAULT_IMAGE and spec.storage.uri == crd.DEFAULT_STORAGE_URI
    assert spec.healing.mode is crd.HealingMode.AUTO
    assert spec.promotion.strategy is crd.RolloutStrategy.ROLLING_RESTART
    assert spec.promotion.rollback.automatic is True


def test_defaults_mirror_the_model_handler():
    """The CRD's defaults are the ML core's defaults: a spec that says nothing behaves like the benchmark."""
    spec = crd.SelfHealingModel.model_validate(MINIMAL).spec
    trigger, heal, gate_config = drift.HealTrigger(), healing.HealConfig(), gate.GateConfig()
    for name in ("input_on", "input_off", "conflict_on", "conflict_off", "persistence"):
        assert getattr(spec.drift, name) == getattr(trigger, name), name
    for name in crd.HealingObjective.model_fields:
        assert getattr(spec.healing.objective, name) == getattr(heal, name), name
    assert (spec.healing.min_rows, spec.healing.seed) == (heal.min_rows, heal.seed)
    from model_handler import heal as heal_job   # what a Job run by hand, without the operator's config, uses
    assert (spec.healing.training_window_rows, spec.healing.wait_for_rows_seconds) == \
        (heal_job.DEFAULT_WINDOW_ROWS, heal_job.DEFAULT_WAIT_SECONDS)
    for name in crd.GateThresholds.model_fields:
        assert getattr(spec.promotion.gate, name) == getattr(gate_config, name), name


def test_label_shift_defaults_mirror_the_trigger():
    spec = crd.SelfHealingModel.model_validate(MINIMAL).spec
    trigger = drift.HealTrigger()
    assert (spec.drift.label_shift_on, spec.drift.label_shift_off) == (trigger.label_on, trigger.label_off)
    assert example()["spec"]["drift"].get("labelShiftOn", 0.4) == trigger.label_on


def test_name_patterns_agree_with_the_rule_language():
    assert crd.MAX_RULE_CHARS == rules.MAX_EXPRESSION_CHARS
    assert crd.CLASS_NAME == f"^{rules.RULE_NAME.pattern}$"
    for keyword in rules.KEYWORDS | rules.FUNCTIONS:   # identifiers the schema admits; semantics refuse them
        spec = {**MINIMAL["spec"], "features": [keyword, "b"]}
        assert crd.SelfHealingModel.model_validate({**MINIMAL, "spec": spec}).spec.features[0] == keyword


def snake_keys(value, path="") -> list[str]:
    if isinstance(value, dict):
        return [f"{path}.{k}" for k in value if "_" in k] + \
            [p for k, v in value.items() for p in snake_keys(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for v in value for p in snake_keys(v, path)]
    return []


def test_round_trip_is_camel_case_and_lossless():
    model = crd.SelfHealingModel.model_validate(example())
    dumped = model.model_dump(mode="json", exclude_none=True)
    assert snake_keys(dumped) == []
    assert dumped["spec"]["drift"]["windowRows"] == 500
    assert dumped["spec"]["healing"]["objective"]["ruleWeight"] == 2.0
    assert dumped["spec"]["features"] == generator.FEATURES
    assert schema_errors(dumped) == []
    assert crd.SelfHealingModel.model_validate(dumped) == model


NOW = datetime.datetime(2026, 11, 22, 19, 0, tzinfo=datetime.timezone.utc)
STATUS = {
    "phase": "RollingOut", "observedGeneration": 3,
    "conditions": [{"type": "Ready", "status": "True", "reason": "PodsReady", "message": "2/2",
                    "lastTransitionTime": "2026-11-22T19:00:00Z", "observedGeneration": 3}],
    "drift": {"score": 1.4, "inputShift": 0.31, "ruleConflict": 0.08, "predictionShift": 0.02,
              "topFeatures": ["amount"], "samples": 1000, "since": "2026-11-22T18:55:00Z",
              "trigger": {"consecutive": 2, "drifting": True}},
    "adapter": {"current": "v1", "desired": "v2", "lastGood": "v1", "podsAtDesired": 1, "podsTotal": 2,
                "ready": "1/2"},
    "lastHeal": {"job": "fraud-heal-2", "version": "v2", "parent": "v1", "started": "2026-11-22T18:56:00Z",
                 "finished": "2026-11-22T18:58:00Z", "result": "Promoted", "reason": "recalibrate: passed",
                 "steps": ["recalibrate"], "failedChecks": []},
    "healsToday": 1, "recentHealStarts": ["2026-11-22T18:56:00Z"],
    "history": [{"version": "v2", "from": "v1", "at": "2026-11-22T18:58:00Z", "reason": "heal", "by": "operator"}],
}


def test_status_validates_and_round_trips_with_from_alias():
    resource = {**example(), "status": STATUS}
    assert schema_errors(resource) == []
    status = crd.SelfHealingModel.model_validate(resource).status
    assert status.phase is crd.Phase.ROLLING_OUT and status.history[0].from_version == "v1"
    assert status.conditions[0].last_transition_time == NOW
    dumped = status.model_dump(mode="json", exclude_none=True)
    assert dumped["history"][0]["from"] == "v1" and dumped["adapter"]["podsAtDesired"] == 1
    assert crd.SelfHealingModelStatus.model_validate(dumped) == status


def test_status_keeps_a_heals_verdict_evidence_and_estimate():
    """What a heal Job concluded is in the schema (an API server prunes fields it does not know)."""
    status = copy.deepcopy(STATUS)
    status["lastHeal"].update(result="AwaitingApproval", verdict="approve", evidence=[],
                              estimate={"estimator": "rule-agreement", "before": 0.61, "after": None,
                                        "note": "no trusted rule fires on the moved classes"})
    resource = {**example(), "status": status}
    assert schema_errors(resource) == []
    last = crd.SelfHealingModel.model_validate(resource).status.last_heal
    assert (last.verdict, last.evidence, last.estimate.before, last.estimate.after) == ("approve", [], 0.61, None)
    assert last.model_dump(mode="json", by_alias=True)["estimate"]["note"].startswith("no trusted rule")


def test_status_shows_the_estimated_accuracy_in_a_column():
    status = {**copy.deepcopy(STATUS), "performance": {
        "estimator": "rule-agreement", "accuracy": 0.93, "display": "0.93", "basis": "candidate v2 after heal "
        "fraud-heal-2", "updated": "2026-11-22T18:58:00Z"}}
    resource = {**example(), "status": status}
    assert schema_errors(resource) == []
    assert crd.SelfHealingModel.model_validate(resource).status.performance.accuracy == 0.93
    unknown = {**status, "performance": {"estimator": "", "display": "unknown", "basis": "served before heal x"}}
    assert schema_errors({**example(), "status": unknown}) == []
    (version,) = committed_crd()["spec"]["versions"]
    columns = {c["name"].upper(): c for c in version["additionalPrinterColumns"]}
    assert columns["EST-ACC"]["jsonPath"] == ".status.performance.display" and columns["EST-ACC"]["type"] == "string"


def test_status_names_the_drift_signals():
    status = copy.deepcopy(STATUS)
    status["drift"].update(labelShift=0.52, signals=["label", "rules"],
                           trigger={"consecutive": 2, "drifting": True, "signals": ["label", "rules"]})
    resource = {**example(), "status": status}
    assert schema_errors(resource) == []
    parsed = crd.SelfHealingModel.model_validate(resource).status.drift
    assert (parsed.label_shift, parsed.signals, parsed.trigger.signals) == (0.52, ["label", "rules"], ["label", "rules"])
    older = copy.deepcopy(STATUS)      # a trigger state saved before signals still reads
    assert crd.SelfHealingModel.model_validate({**example(), "status": older}).status.drift.trigger.signals == []


def test_status_from_a_newer_operator_still_reads():
    """Unknown status keys are ignored by the models (and pruned by the API server), never errors."""
    newer = copy.deepcopy(STATUS)
    newer["shadowTraffic"] = {"share": 0.1}
    newer["adapter"]["canary"] = "v3"
    newer["conditions"].append({"type": "CanaryHealthy", "status": "Unknown", "reason": "NotStarted",
                                "lastTransitionTime": "2026-11-22T19:00:00Z"})
    status = crd.SelfHealingModel.model_validate({**example(), "status": newer}).status
    assert status.adapter.current == "v1" and [c.type for c in status.conditions] == ["Ready", "CanaryHealthy"]


def test_status_rejects_a_bad_condition():
    resource = {**example(), "status": {"conditions": [
        {"type": "Ready", "status": "Yes", "reason": "not camel case!",
         "lastTransitionTime": "2026-11-22T19:00:00Z"}]}}
    for checker in (schema_errors, pydantic_errors):
        errors = checker(resource)
        assert any(e.startswith("status.conditions[0].status:") for e in errors), errors
        assert any(e.startswith("status.conditions[0].reason:") for e in errors), errors


def test_heal_job_config_carries_the_spec():
    spec = crd.SelfHealingModel.model_validate(example()).spec
    config = spec.heal_job_config()
    assert config["rules"] == [{**rule, "kind": "heuristic"} for rule in example()["spec"]["rules"]]
    assert config["healing"] == {"trainingWindowRows": 3000, "minRows": 200, "waitForRowsSeconds": 120, "seed": 0,
                                 "ruleWeight": 2.0,
                                 "anchorWeight": 1.0, "entropyWeight": 0.1, "balanceWeight": 1.0, "minTrust": 0.5,
                                 "priorHedge": 0.25}
    assert config["promotion"] == {"minConflictDrop": 0.005, "conflictTolerance": 0.002,
                                   "maxClassRateRatio": 3.0, "maxDisagreement": 0.2}


def test_heal_job_reads_the_config():
    """Where the heal Job's entrypoint is present, its own parser accepts the config and applies it."""
    heal_job = pytest.importorskip("model_handler.heal")
    resource = example()
    resource["spec"]["healing"]["objective"] = {"ruleWeight": 3.5, "minTrust": 0.25}
    resource["spec"]["promotion"]["gate"] = {"maxDisagreement": 0.1}
    heal_config, window_rows = heal_job.configs(crd.SelfHealingModel.model_validate(resource).spec.heal_job_config())
    assert (heal_config.rule_weight, heal_config.min_trust, heal_config.gate.max_disagreement) == (3.5, 0.25, 0.1)
    assert window_rows == 3000
