"""The SelfHealingModel custom resource (selfheal.io/v1alpha1) as Pydantic models.

These classes are the single source of truth: the operator validates CR bodies with them
(`SelfHealingModel.model_validate(body)` fills in every default), and the CRD in
`crds/selfhealingmodels.yaml` is generated from them by `kube-custom-resource`:

    python -m shm_operator.crd > crds/selfhealingmodels.yaml     # or --write, or -o <file>
    python -m shm_operator.crd --check crds/selfhealingmodels.yaml

Conventions (those of kube-custom-resource): snake_case here, camelCase in YAML; a field's
description is its `kubectl explain` text, and for a nested object the text is the class docstring
(the library resolves the `$ref`, so the class docstring replaces a field description there);
constrained types become CRD validation. Defaults stay out of the CRD (the library's choice: the
API server never rewrites stored objects) and are applied by these models.

What the schema cannot say (rules that parse, off <= on thresholds, ...) is checked by
`shm_operator.decisions.validate_spec_semantics`, which the operator reports in status.
Defaults mirror `model_handler` (HealTrigger, HealConfig, GateConfig); tests/test_crd.py keeps them equal.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import typing as t
from pathlib import Path

import yaml
from pydantic import (ConfigDict, Field, GetJsonSchemaHandler, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError

from kube_custom_resource import CustomResource, CustomResourceRegistry
from kube_custom_resource import schema
from model_handler.rules import FUNCTIONS, KEYWORDS, RuleError, RuleSet
from shm_operator.names import ADAPTER_VERSION, API_GROUP, API_VERSION, BASE_VERSION

DEFAULT_IMAGE = "ghcr.io/selfheal/model-server:0.1.0"
DEFAULT_STORAGE_URI = "file:///var/lib/selfheal"   # node-local: the sandbox and development only
# The operator's default for models without spec.storage.uri (the chart's `storage.uri`).
STORAGE_URI_ENV = "SELFHEAL_STORAGE_URI"
MAX_RULE_CHARS = 2000          # model_handler.rules.MAX_EXPRESSION_CHARS
MAX_HISTORY = 20

# Feature names are identifiers of the rule language; class and rule names are what the rule
# language and Prometheus labels accept; adapter versions become object-store paths and labels.
FEATURE_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
CLASS_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
TORCHSERVE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
URI_WITH_SCHEME = r"^[A-Za-z][A-Za-z0-9+.-]*://.+$"
CONDITION_TYPE = r"^[A-Z][A-Za-z0-9]*$"
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"   # metav1.Condition's reason
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
DEFAULT_JOB_TTL_SECONDS = 86_400
QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?")
# What the schema cannot say is found by each model's `problems()`: (the field's path under that
# model, what is wrong). Validated with this context, SelfHealingModelSpec raises them all at once,
# each at its field (the operator does, once per generation); without it a model is what the CRD
# schema admits, as the API server would.
Problem = tuple[tuple, str]
SEMANTICS = {"semantics": True}


def _under(prefix: tuple, problems: list[Problem]) -> list[Problem]:
    return [((*prefix, *loc), what) for loc, what in problems]

Fraction = schema.confloat(ge=0, le=1)
NonNegative = schema.confloat(ge=0)


def _explain_text(text: str) -> str:
    """Docstrings are wrapped at 100 columns; `kubectl explain` wraps by itself, so keep one
    line per paragraph."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text)


def _shape_descriptions(json_schema: JsonSchemaValue, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
    """Unwrap the object's description and append each property's default to its description.

    The library keeps defaults out of the CRD, so without this `kubectl explain` could not tell
    a user what an omitted field means; generating the text from the default keeps them equal.
    An enum property is a `$ref` whose description would be replaced by the enum's docstring when
    the library resolves it, so it is inlined here (a copy: the shared definition stays as is).
    """
    if "description" in json_schema:
        json_schema["description"] = _explain_text(json_schema["description"])
    for prop in json_schema.get("properties", {}).values():
        default = prop.get("default")
        if default in (None, "", []):
            continue
        if "$ref" in prop:
            resolved = handler.resolve_ref_schema({"$ref": prop.pop("$ref")})
            prop.update({**resolved, **prop, "description": resolved.get("description", "")})
        if "description" in prop:
            shown = default if isinstance(default, str) else json.dumps(default)
            prop["description"] = f"{prop['description']} Default: {shown}."
    return json_schema


class Described(schema.BaseModel):
    """Base of every object in the CRD: explain text shaped by `_shape_descriptions`."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return _shape_descriptions(super().__get_pydantic_json_schema__(core_schema, handler), handler)


class DescribedEnum(schema.Enum):
    """An enum whose docstring becomes one-paragraph explain text."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return _shape_descriptions(super().__get_pydantic_json_schema__(core_schema, handler), handler)


class SpecModel(Described):
    """Base of the spec objects: unknown keys are errors, not silently ignored.

    A typo such as `windowRow` would otherwise quietly fall back to the default wherever no API
    server prunes or rejects it (the sandbox, unit tests). Pydantic renders `extra="forbid"` as
    `additionalProperties: false`, which a structural CRD schema does not allow next to
    `properties`; the API server already rejects unknown fields itself (kubectl's strict field
    validation), so the keyword is dropped from the generated schema.
    """

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = super().__get_pydantic_json_schema__(core_schema, handler)
        json_schema.pop("additionalProperties", None)
        return json_schema


def _unique(values: list, what: str) -> list:
    duplicates = sorted({str(v) for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"{what} must be unique, duplicated: {', '.join(duplicates)}")
    return values


# ---- enums -------------------------------------------------------------------------------------

class HealingMode(str, DescribedEnum):
    """Auto heals and promotes a candidate that passes the gate; Manual heals and leaves a passing
    candidate in status.candidate for a person to promote (by setting spec.adapter.version);
    Off never starts a heal."""

    AUTO = "Auto"
    MANUAL = "Manual"
    OFF = "Off"


class RuleKind(str, DescribedEnum):
    """heuristic: an analyst's rule of thumb, trusted as far as the evidence agrees (its training-time
    precision, less where its inputs moved beyond what a recalibration explains); definition: holds
    by definition whatever the traffic does (always trusted, also when its inputs drift)."""

    HEURISTIC = "heuristic"
    DEFINITION = "definition"


class RolloutStrategy(str, DescribedEnum):
    """How pods move to a new adapter: RollingRestart replaces the pods one by one (the Deployment
    rolls); HotSwap keeps the pods and each swaps the adapter atomically between requests."""

    ROLLING_RESTART = "RollingRestart"
    HOT_SWAP = "HotSwap"


class Phase(str, DescribedEnum):
    """Where the model is in its life cycle: Pending (no pod ready yet, none failing), Unavailable
    (no pod ready and pods failing: the Ready condition gives their waiting reasons, e.g.
    ImagePullBackOff or CrashLoopBackOff), Serving, Drifting (drift declared, no heal running),
    Healing (a heal Job runs), Promoting (a candidate passed and is being promoted or awaits
    approval), RollingOut (pods moving to a new adapter, rollback watch running), Degraded (serving,
    but something needs a person), Failed (the spec cannot be served)."""

    PENDING = "Pending"
    UNAVAILABLE = "Unavailable"
    SERVING = "Serving"
    DRIFTING = "Drifting"
    HEALING = "Healing"
    PROMOTING = "Promoting"
    ROLLING_OUT = "RollingOut"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class ConditionStatus(str, DescribedEnum):
    """Whether the condition holds: True, False or Unknown."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(str, DescribedEnum):
    """The condition types this operator writes (the schema accepts any CamelCase type, so a newer
    operator may add types without breaking an older CRD)."""

    READY = "Ready"
    CHILDREN_APPLIED = "ChildrenApplied"
    DRIFT_DETECTED = "DriftDetected"
    HEALING = "Healing"
    ROLLED_BACK = "RolledBack"
    DEGRADED = "Degraded"


# ---- spec --------------------------------------------------------------------------------------

class ResourceRequirements(SpecModel):
    """Compute resources of a container, as in a Pod spec: quantities such as "500m", "1Gi" or 2."""

    requests: dict[str, schema.IntOrString] = Field(
        default_factory=dict, description="Minimum resources, e.g. {cpu: 500m, memory: 1Gi}.")
    limits: dict[str, schema.IntOrString] = Field(
        default_factory=dict, description="Maximum resources, e.g. {memory: 2Gi}.")

    def problems(self) -> list[Problem]:
        return [((kind, name), f"{value!r} is not a Kubernetes quantity (such as 500m, 2, 1.5Gi)")
                for kind in ("requests", "limits") for name, value in getattr(self, kind).items()
                if not QUANTITY.fullmatch(str(value))]


class ModelSource(SpecModel):
    """The model the pods serve: a TorchServe model archive or directory holding the frozen
    backbone, the handler and the reference statistics of the training data."""

    archive: schema.constr(min_length=1, max_length=2048) = Field(
        ..., description="The TorchServe model archive (.mar) or model directory. An fsspec URI (s3://, gs://, az://, "
                         "file://, ...) is copied into an emptyDir by the storage-initializer init container of the "
                         "serving pods and heal Jobs and checked against `<archive>.sha256` beside it (sha256sum "
                         "format; write it with `python -m model_handler.fetch --write-digest`); a missing or "
                         "wrong checksum stops the pod with the reason. pvc://<claim>/<path> mounts the claim "
                         "read-only. A plain path must exist in the image or on a volume the pods mount; it is used "
                         "as is. Credentials: spec.storage.secretName or the pods' service account.")
    image: schema.constr(min_length=1, max_length=512) = Field(
        DEFAULT_IMAGE, description="Container image of the model server.")
    name: schema.Optional[schema.constr(pattern=TORCHSERVE_NAME)] = Field(
        None, description="TorchServe model name.")

    @field_validator("archive")
    @classmethod
    def _archive_location(cls, archive: str) -> str:
        if archive.startswith("pvc://"):
            claim, _, inside = archive[len("pvc://"):].partition("/")
            if not re.match(DNS_SUBDOMAIN, claim) or not inside.strip("/"):
                raise ValueError(f"{archive!r}: a PVC archive is pvc://<claim name>/<path in the claim>")
        elif "://" in archive and not re.match(URI_WITH_SCHEME, archive):
            raise ValueError(f"{archive!r} is neither a URI (<scheme>://...) nor a path")
        return archive


class ServingSpec(SpecModel):
    """How each model-server pod serves and samples traffic."""

    workers: schema.conint(ge=1, le=64) = Field(2, description="TorchServe workers per pod.")
    sample_fraction: Fraction = Field(
        0.2, description="Share of requests (features and model outputs, never labels) written to "
                         "storage for healing, 0..1.")
    disruption_budget: schema.Optional[DisruptionBudget] = Field(None)


class DisruptionBudget(SpecModel):
    """A PodDisruptionBudget for the model-server pods (voluntary disruptions such as node drains
    wait while it would be broken). Give exactly one of minAvailable and maxUnavailable: a number of
    pods or a percentage such as "50%"."""

    min_available: schema.Optional[schema.IntOrString] = Field(
        None, description="Pods that must stay available during a voluntary disruption.")
    max_unavailable: schema.Optional[schema.IntOrString] = Field(
        None, description="Pods that may be unavailable during a voluntary disruption.")

    @field_validator("min_available", "max_unavailable", mode="before")
    @classmethod
    def _count_or_percent(cls, value):
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        if isinstance(value, str) and re.fullmatch(r"(100|[1-9]?[0-9])%|[0-9]+", value):
            return value
        raise ValueError(f"must be a non-negative number of pods or a percentage such as 50%, not {value!r}")

    @model_validator(mode="after")
    def _exactly_one(self) -> "DisruptionBudget":
        if (self.min_available is None) == (self.max_unavailable is None):
            raise ValueError("give exactly one of minAvailable and maxUnavailable")
        return self


class Toleration(SpecModel):
    """A toleration, as in a Pod spec: lets the pods run on nodes with a matching taint."""

    key: schema.Optional[schema.constr(max_length=317)] = Field(
        None, description="Taint key; empty with operator Exists matches every taint.")
    operator: schema.Optional[schema.constr(pattern=r"^(Exists|Equal)$")] = Field(
        None, description="Exists or Equal (Kubernetes' default when omitted: Equal).")
    value: schema.Optional[schema.constr(max_length=63)] = Field(None, description="Taint value for Equal.")
    effect: schema.Optional[schema.constr(pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)?$")] = Field(
        None, description="NoSchedule, PreferNoSchedule or NoExecute; empty matches all.")
    toleration_seconds: schema.Optional[int] = Field(
        None, description="With NoExecute: how long the pod stays bound after the taint appears.")


class Affinity(Described):
    """Node and pod (anti-)affinity of the pods, exactly as a Pod spec's `affinity` (nodeAffinity,
    podAffinity, podAntiAffinity); passed through unchanged, checked by the API server with the
    pods."""

    model_config = ConfigDict(extra="allow")


class LocalObjectReference(SpecModel):
    """A reference to an object in the same namespace, by name."""

    name: schema.constr(pattern=DNS_SUBDOMAIN, max_length=253) = Field(..., description="Name of the object.")


class PodTemplate(SpecModel):
    """Identity, scheduling and metadata of the model-server pods and of the heal Job's pods, as a
    Pod spec says them. The operator's own labels (selfheal.io/model, selfheal.io/component, the
    Deployment's selector) win over these, and the security settings of the pods stay the
    operator's."""

    service_account_name: schema.Optional[schema.constr(pattern=DNS_SUBDOMAIN, max_length=253)] = Field(
        None, description="ServiceAccount the pods run as, e.g. for a cloud workload identity that grants the "
                          "storage bucket (IRSA, GKE Workload Identity). Its API token is still not mounted.")
    image_pull_secrets: t.Annotated[list[LocalObjectReference], Field(max_length=32)] = Field(
        default_factory=list, description="Secrets with credentials for pulling the images from private registries.")
    node_selector: dict[str, schema.constr(max_length=63)] = Field(
        default_factory=dict, description="Node labels a node must have to run the pods.")
    tolerations: t.Annotated[list[Toleration], Field(max_length=64)] = Field(
        default_factory=list, description="Taints the pods tolerate.")
    affinity: schema.Optional[Affinity] = Field(None)
    priority_class_name: schema.Optional[schema.constr(pattern=DNS_SUBDOMAIN, max_length=253)] = Field(
        None, description="PriorityClass of the pods.")
    labels: dict[str, schema.constr(pattern=LABEL_VALUE, max_length=63)] = Field(
        default_factory=dict, description="Extra pod labels; the operator's own labels win over these.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Extra pod annotations; the operator's own annotations win over these.")


class Rule(SpecModel):
    """An analyst rule: rows matching `when` should belong to class `label`. The operator checks
    that every rule parses against spec.features and spec.classes and reports errors in status."""

    name: schema.constr(pattern=CLASS_NAME) = Field(
        ..., description="Unique rule name: letters, digits, '_', '.', '-', at most 63 characters.")
    when: schema.constr(min_length=1, max_length=MAX_RULE_CHARS) = Field(
        ..., description="Condition over feature names: numbers, + - * /, < <= > >= == !=, and/or/not, "
                         "parentheses, abs(), log(), true/false. Never evaluated as code.")
    label: schema.constr(pattern=CLASS_NAME) = Field(
        ..., description="The class (one of spec.classes) that rows matching `when` belong to.")
    weight: schema.confloat(gt=0, allow_inf_nan=False) = Field(
        1.0, description="How much the analysts trust the rule, > 0.")
    kind: RuleKind = Field(
        RuleKind.HEURISTIC, description="heuristic (trusted as far as the evidence agrees) or definition (always "
                                        "holds, trusted even when its inputs drift).")


class DriftSpec(SpecModel):
    """When drift is declared: any of three signals (input shift as the largest per-feature PSI;
    label shift, the log-ratio of the class prior estimated from the predictions to the training
    prior; the rise of conflict with trusted rules) at or above its `on` threshold for `persistence`
    checks in a row. Drift opens a diagnosis (a heal Job); promotion asks for independent evidence.
    It clears once every signal is below its `off` threshold (hysteresis, so the state cannot flap)."""

    window_rows: schema.conint(ge=50, le=10_000_000) = Field(
        500, description="Rows (merged over all pods) in one drift window.")
    min_samples: schema.conint(ge=1, le=10_000_000) = Field(
        200, description="A window with fewer rows is never evidence of drift.")
    check_interval_seconds: schema.conint(ge=1, le=86_400) = Field(
        30, description="Seconds between polls of the pods' drift sketches.")
    input_on: NonNegative = Field(0.10, description="Input shift (max per-feature PSI) that counts as on.")
    input_off: NonNegative = Field(0.07, description="Input shift below which drift may clear; <= inputOn.")
    conflict_on: Fraction = Field(0.05, description="Rule conflict (share, 0..1) that counts as on.")
    conflict_off: Fraction = Field(0.025, description="Rule conflict below which drift may clear; <= conflictOn.")
    label_shift_on: NonNegative = Field(
        0.4, description="Label shift that counts as on: max over classes of |log(q/pi)|, q the class prior "
                         "estimated from the window's predicted-class counts, pi the training prior (0.4 is a "
                         "class rate x1.5 or /1.5).")
    label_shift_off: NonNegative = Field(0.2, description="Label shift below which drift may clear; <= labelShiftOn.")
    persistence: schema.conint(ge=1, le=100) = Field(
        2, description="Consecutive windows with a signal on before drift is declared.")

    def problems(self) -> list[Problem]:
        checks = [(getattr(self, off) > getattr(self, on), name_off,
                   f"{getattr(self, off):g} is above {name_on} {getattr(self, on):g}: drift could never clear")
                  for off, on, name_off, name_on in (("input_off", "input_on", "inputOff", "inputOn"),
                                                     ("conflict_off", "conflict_on", "conflictOff", "conflictOn"),
                                                     ("label_shift_off", "label_shift_on", "labelShiftOff",
                                                      "labelShiftOn"))]
        checks.append((self.min_samples > self.window_rows, "minSamples",
                       f"{self.min_samples} is above windowRows {self.window_rows}: no window would ever count"))
        return [((path,), what) for failed, path, what in checks if failed]


class HealingObjective(SpecModel):
    """Weights of the label-free healing objective (model_handler.healing.HealConfig)."""

    rule_weight: NonNegative = Field(2.0, description="Weight of agreement with trusted rules.")
    anchor_weight: NonNegative = Field(1.0, description="Weight of staying close to the current model.")
    entropy_weight: NonNegative = Field(0.1, description="Weight of confident predictions (entropy).")
    balance_weight: NonNegative = Field(1.0, description="Weight of keeping class rates near the expected prior.")
    min_trust: Fraction = Field(
        0.5, description="Heuristic rules whose trust (training-time precision) is below this abstain from "
                         "adapter training, 0..1. A rule's trust does not fall because its inputs moved.")
    prior_hedge: Fraction = Field(
        0.25, description="Share of traffic expected to keep following the training class prior, 0..1: a prior "
                         "correction serves the prior of that mix with the estimated one (0: serve the estimate).")


class HealingSpec(SpecModel):
    """When and how healing Jobs run. A heal needs drift declared, no heal or rollout in progress,
    the cooldown passed and the daily budget not spent."""

    mode: HealingMode = Field(HealingMode.AUTO, description="Auto, Manual or Off.")
    cooldown_seconds: schema.conint(ge=0, le=604_800) = Field(
        1800, description="Seconds after a heal finished before another may start.")
    max_heals_per_day: schema.conint(ge=1, le=1000) = Field(
        4, description="Heals that may start in any 24 hours.")
    training_window_rows: schema.conint(ge=200, le=10_000_000) = Field(
        3000, description="Most recent sampled rows a heal trains and gates on.")
    min_rows: schema.conint(ge=50, le=10_000_000) = Field(
        200, description="A heal with fewer sampled rows than this does nothing.")
    wait_for_rows_seconds: schema.conint(ge=0, le=86_400) = Field(
        120, description="How long a heal Job waits for trainingWindowRows sampled rows since the drift's onset "
                         "before it heals on fewer (at least minRows): a fix estimated on more rows is surer (a "
                         "class-prior estimate from 1,000 rows can miss a 20% fraud wave by 5 points).")
    seed: schema.conint(ge=0, le=2**31 - 1) = Field(0, description="Random seed of the heal.")
    objective: HealingObjective = Field(default_factory=HealingObjective)
    resources: schema.Optional[ResourceRequirements] = Field(None)
    active_deadline_seconds: schema.conint(ge=30, le=86_400) = Field(
        600, description="The heal Job fails after this many seconds.")
    backoff_limit: schema.conint(ge=0, le=10) = Field(
        1, description="Retries of a failed heal pod.")
    ttl_seconds_after_finished: schema.conint(ge=0, le=31_536_000) = Field(
        DEFAULT_JOB_TTL_SECONDS, description="A finished heal Job (and its pod) is deleted this many seconds after it "
                                             "finished; the operator sets it once it has read the Job's result into "
                                             "status.lastHeal, so no result is lost to it.")

    def problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.min_rows > self.training_window_rows:
            problems.append((("minRows",), f"{self.min_rows} is above trainingWindowRows "
                                           f"{self.training_window_rows}: no heal could run"))
        if self.wait_for_rows_seconds >= self.active_deadline_seconds:
            problems.append((("waitForRowsSeconds",), f"{self.wait_for_rows_seconds} is not below "
                                                      f"activeDeadlineSeconds {self.active_deadline_seconds}: the "
                                                      "Job would be killed while it waits for rows"))
        return problems


class GateThresholds(SpecModel):
    """Promotion gate limits a candidate adapter must meet on held-out recent traffic
    (model_handler.gate.GateConfig)."""

    min_conflict_drop: NonNegative = Field(
        0.005, description="Least absolute drop of the trusted-rule conflict rate.")
    conflict_tolerance: NonNegative = Field(
        0.002, description="Most the trusted-rule conflict rate may rise.")
    max_class_rate_ratio: schema.confloat(ge=1) = Field(
        3.0, description="Most a predicted class rate may differ from the expected prior, as a ratio either way.")
    max_disagreement: Fraction = Field(
        0.2, description="Most predictions the candidate may change versus the cheaply fixed model, 0..1.")


class RollbackSpec(SpecModel):
    """Automatic rollback after a rollout: during `watchSeconds`, harm (a rise in rule conflict or
    a class-rate swing beyond these limits, on at least `minSamples` rows) restores the last good
    adapter."""

    automatic: bool = Field(True, description="Roll back by itself on harm; false only reports it.")
    watch_seconds: schema.conint(ge=0, le=604_800) = Field(
        600, description="How long after a rollout the signals are watched; also the longest a watched rollout "
                         "waits for a drift window of the version it replaces (its baseline).")
    min_samples: schema.conint(ge=1, le=10_000_000) = Field(
        200, description="Rows served by the new adapter before harm can be judged.")
    max_conflict_increase: Fraction = Field(
        0.02, description="Most the rule conflict may rise over its pre-rollout value.")
    max_class_rate_ratio: schema.confloat(ge=1) = Field(
        2.0, description="Most a predicted class rate may change versus before the rollout, as a ratio either way.")
    class_rate_tolerance: Fraction = Field(
        0.01, description="Class-rate changes smaller than this (absolute share) are never harm, however large "
                          "their ratio: a rare class moving from 0.2% to 0.5% is noise, not harm.")


class PromotionSpec(SpecModel):
    """How a healed candidate becomes the served adapter, and how it is taken back."""

    gate: GateThresholds = Field(default_factory=GateThresholds)
    strategy: RolloutStrategy = Field(
        RolloutStrategy.ROLLING_RESTART, description="RollingRestart or HotSwap.")
    rollback: RollbackSpec = Field(default_factory=RollbackSpec)


class AdapterSpec(SpecModel):
    """The adapter version every pod must serve. The operator writes it after a successful heal; a
    person writes it to roll back or forward, or to approve a candidate in Manual mode."""

    version: schema.constr(pattern=ADAPTER_VERSION) = Field(
        BASE_VERSION, description="Adapter version; `base` is the identity adapter.")


def default_storage_uri() -> str:
    """The operator's default storage: $SELFHEAL_STORAGE_URI (the chart's `storage.uri`), else
    file:///var/lib/selfheal, which is node-local and fit only for the sandbox and development."""
    return os.environ.get(STORAGE_URI_ENV, "").strip() or DEFAULT_STORAGE_URI


class StorageSpec(SpecModel):
    """Where adapters and sampled traffic live (an fsspec URI shared by pods, Jobs and operator)."""

    uri: schema.constr(pattern=URI_WITH_SCHEME, max_length=2048) = Field(
        default_factory=default_storage_uri,
        description="fsspec URI such as s3://bucket/prefix (s3fs is in the images; gs:// and az:// need the "
                    "extra `storage-extra`). The default is node-local, for the sandbox and development only. "
                    f"Default: the operator's ${STORAGE_URI_ENV} (the chart's storage.uri), else {DEFAULT_STORAGE_URI}.")
    secret_name: schema.Optional[schema.constr(pattern=DNS_SUBDOMAIN, max_length=253)] = Field(
        None, description="Secret in the same namespace whose keys become environment variables of the serving "
                          "pods, the heal Jobs and their storage-initializer init containers (storage "
                          "credentials, e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL). Unset: "
                          "the pods' service account (workload identity).")


class SelfHealingModelSpec(SpecModel):
    """Desired state of a self-healing model."""

    model: ModelSource
    replicas: schema.conint(ge=1, le=1000) = Field(2, description="Model-server pods.")
    resources: schema.Optional[ResourceRequirements] = Field(None)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    features: t.Annotated[list[schema.constr(pattern=FEATURE_NAME)], Field(min_length=1, max_length=256)] = Field(
        ..., description="Input feature names in request order: identifiers, unique.",
        json_schema_extra={"x-kubernetes-list-type": "set"})
    classes: t.Annotated[list[schema.constr(pattern=CLASS_NAME)], Field(min_length=2, max_length=64)] = Field(
        ..., description="Class names in the model's output order, unique.",
        json_schema_extra={"x-kubernetes-list-type": "set"})
    rules: t.Annotated[list[Rule], Field(max_length=256)] = Field(
        default_factory=list, description="Analyst rules, unique by name.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    drift: DriftSpec = Field(default_factory=DriftSpec)
    healing: HealingSpec = Field(default_factory=HealingSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    pod_template: PodTemplate = Field(default_factory=PodTemplate)

    def heal_job_config(self) -> dict:
        """The config the heal Job reads (`python -m model_handler.heal --config FILE`, a ConfigMap
        of the Job's own): the rules, the objective and row counts under `healing`, the gate limits
        under `promotion`. A rule's whitespace runs become one space: the same tokens and
        RuleSet.hash, and every character of a rule that parses is then one byte in JSON (the
        largest valid spec renders to about 0.57 MB, under a ConfigMap's 1 MiB)."""
        healing = self.healing
        return {"rules": [{**rule.model_dump(mode="json"),
                           "when": re.sub(r"\s+", " ", rule.when, flags=re.ASCII).strip()} for rule in self.rules],
                "healing": {"trainingWindowRows": healing.training_window_rows, "minRows": healing.min_rows,
                            "waitForRowsSeconds": healing.wait_for_rows_seconds, "seed": healing.seed,
                            **healing.objective.model_dump()},
                "promotion": self.promotion.gate.model_dump()}

    @field_validator("features", "classes")
    @classmethod
    def _names_unique(cls, values: list[str], info) -> list[str]:
        return _unique(values, info.field_name)

    @field_validator("rules")
    @classmethod
    def _rule_names_unique(cls, rules: list[Rule]) -> list[Rule]:
        _unique([rule.name for rule in rules], "rule names")
        return rules

    @model_validator(mode="after")
    def _semantics(self, info: ValidationInfo) -> "SelfHealingModelSpec":
        """With the SEMANTICS context, what the schema cannot say (features that are words of the
        rule language, rules that do not parse, thresholds in the wrong order, malformed
        quantities), every problem at once, each at its field, as Pydantic errors `semantics`."""
        if not (info.context or {}).get("semantics"):
            return self
        problems = [*self.problems(), *_under(("drift",), self.drift.problems()),
                    *_under(("healing",), self.healing.problems())]
        rollback, interval = self.promotion.rollback, self.drift.check_interval_seconds
        if 0 < rollback.watch_seconds < interval:
            problems.append((("promotion", "rollback", "watchSeconds"),
                             f"{rollback.watch_seconds}s is shorter than drift.checkIntervalSeconds {interval}s: "
                             "no check would fall inside the watch"))
        for prefix, resources in ((("resources",), self.resources), (("healing", "resources"), self.healing.resources)):
            problems += _under(prefix, resources.problems() if resources else [])
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=PydanticCustomError("semantics", "{what}", {"what": what}), loc=loc, input=None)
                for loc, what in problems])
        return self

    def problems(self) -> list[Problem]:
        """Feature names the rule language reserves, and every rule that does not parse (each on its
        own, so every broken rule is reported, not just the first)."""
        reserved = KEYWORDS | FUNCTIONS
        problems = [(("features", i), f"{name!r} is a reserved word of the rule language "
                                      f"({', '.join(sorted(reserved))})")
                    for i, name in enumerate(self.features) if name in reserved]
        for i, rule in enumerate(self.rules):
            try:
                RuleSet.from_dicts([rule.model_dump(by_alias=True)], self.features, self.classes)
            except RuleError as err:
                problems.append((("rules", i), str(err)))
        return problems


# ---- status ------------------------------------------------------------------------------------
# Status models ignore unknown keys (Pydantic's default): a status written by a newer operator
# still reads. The CRD prunes fields it does not know, so nothing here preserves unknown fields.

class Condition(Described):
    """A Kubernetes condition (the metav1.Condition format)."""

    type: schema.constr(pattern=CONDITION_TYPE, max_length=316) = Field(
        ..., description="Ready, ChildrenApplied, DriftDetected, Healing, RolledBack or Degraded.")
    status: ConditionStatus
    reason: schema.constr(pattern=CONDITION_REASON, max_length=1024) = Field(
        ..., description="CamelCase reason of the last transition or update.")
    message: schema.constr(max_length=32768) = Field("", description="Human-readable details.")
    last_transition_time: datetime.datetime = Field(..., description="When the status last changed.")
    observed_generation: schema.Optional[schema.conint(ge=0)] = Field(
        None, description="metadata.generation the condition was computed from.")


class TriggerState(Described):
    """State of the drift hysteresis (model_handler.drift.HealTrigger)."""

    consecutive: int = Field(0, description="Windows in a row with a signal on.")
    drifting: bool = Field(False, description="Drift declared and not yet cleared.")
    signals: list[str] = Field(
        default_factory=list, description="Signals on in the last window with enough rows: input, label, rules.")


class DriftStatus(Described):
    """Summary of the last drift check (numbers, never raw sketches)."""

    score: schema.Optional[float] = Field(
        None, description="The strongest of the three signals relative to its on threshold: >= 1 means one reached it.")
    input_shift: schema.Optional[float] = Field(None, description="Largest per-feature PSI of the window.")
    label_shift: schema.Optional[float] = Field(
        None, description="Max over classes of |log(q/pi)|: the class prior estimated from the window's predictions "
                          "(q) against the training prior (pi).")
    rule_conflict: schema.Optional[float] = Field(None, description="Trust-weighted excess rule conflict, 0..1.")
    prediction_shift: schema.Optional[float] = Field(None, description="PSI of the predicted class rates.")
    signals: list[str] = Field(
        default_factory=list, description="Signals on in the last window with enough rows: input, label, rules.")
    top_features: list[str] = Field(default_factory=list, description="Features that moved most.")
    samples: schema.Optional[int] = Field(None, description="Rows in the window.")
    adapter: schema.Optional[str] = Field(
        None, description="The adapter version that served every row of the window; empty if the window mixed "
                          "versions (a rollout was under way). Only such a window is a rollout's baseline.")
    since: schema.Optional[datetime.datetime] = Field(None, description="When drift was declared.")
    onset: schema.Optional[datetime.datetime] = Field(
        None, description="When the first window of this drift counted: heals train only on traffic sampled after it.")
    last_check: schema.Optional[datetime.datetime] = Field(
        None, description="When the pods were last polled with a result that changed the status (at least every "
                          "5 minutes while nothing changes: a check that changes nothing writes nothing).")
    unreachable_pods: list[str] = Field(
        default_factory=list, description="Ready pods whose status could not be read.")
    trigger: schema.Optional[TriggerState] = Field(None)


class AdapterStatus(Described):
    """Which adapter the pods serve."""

    current: schema.Optional[str] = Field(
        None, description="Version served by all ready pods; empty while they differ.")
    desired: schema.Optional[str] = Field(None, description="spec.adapter.version as last acted on.")
    last_good: schema.Optional[str] = Field(
        None, description="Last version that survived its rollback watch on at least rollback.minSamples live rows; "
                          "the rollback target.")
    pods_at_desired: schema.Optional[int] = Field(None, description="Ready pods serving the desired version.")
    pods_total: schema.Optional[int] = Field(None, description="Pods wanted (spec.replicas).")
    ready: schema.Optional[str] = Field(None, description='"podsAtDesired/podsTotal", shown in the READY column.')
    pending: schema.Optional[str] = Field(
        None, description="spec.adapter.version not rolled out yet: it waits (at most rollback.watchSeconds) for a "
                          "drift window of the served version, which its rollback watch compares with.")


class HealEstimate(Described):
    """A label-free estimate of accuracy from a heal Job: of the served model before the heal and of
    its candidate after; an empty value is unknown, and `note` says why."""

    estimator: str = Field("", description="How it was estimated (the estimator's name).")
    before: schema.Optional[float] = Field(None, description="Estimated accuracy of the served model, 0..1.")
    after: schema.Optional[float] = Field(None, description="Estimated accuracy of the candidate, 0..1.")
    note: str = Field("", description="Why a value is unknown, or what limits the estimate.")


class LastHeal(Described):
    """The most recent healing Job."""

    job: schema.Optional[str] = Field(None, description="Name of the heal Job.")
    version: schema.Optional[str] = Field(None, description="Adapter version the Job was asked to create.")
    parent: schema.Optional[str] = Field(None, description="Adapter version it healed from.")
    started: schema.Optional[datetime.datetime] = Field(None, description="When the Job was created.")
    finished: schema.Optional[datetime.datetime] = Field(None, description="When its result was read.")
    result: schema.Optional[str] = Field(
        None, description="Running, Promoted, AwaitingApproval, Rejected, NothingToFix or Failed.")
    verdict: schema.Optional[str] = Field(
        None, description="The Job's verdict: promote (independent held-out evidence supports the fix), approve "
                          "(it passed the safety checks, but no independent evidence supports it: a person decides, "
                          "whatever the mode), reject, or nothing (nothing to fix).")
    evidence: list[str] = Field(default_factory=list, description="The independent checks behind the verdict.")
    estimate: schema.Optional[HealEstimate] = Field(None)
    class_rates: schema.Optional[dict[str, float]] = Field(
        None, description="The candidate's predicted class shares on the held-out rows the gate judged: what the "
                          "rollback watch expects live once it serves.")
    reason: schema.Optional[schema.constr(max_length=4096)] = Field(None, description="Why, in words.")
    steps: list[str] = Field(default_factory=list, description="Fixes the heal applied, cheapest first.")
    failed_checks: list[str] = Field(default_factory=list, description="Promotion gate checks the candidate failed.")


class HistoryEntry(Described):
    """One change of the served adapter."""

    version: str = Field(..., description="Adapter version now desired.")
    from_version: schema.Optional[str] = Field(None, alias="from", description="Version before the change.")
    at: datetime.datetime = Field(..., description="When the change was made.")
    reason: str = Field("", description="Why (heal result, rollback cause, manual change).")
    by: str = Field("", description="Who: operator, rollback or user.")


class Candidate(Described):
    """A healed adapter that passed the gate and awaits a person (Manual mode, or a verdict of
    approve: no independent evidence supports the fix). Approve it by setting spec.adapter.version
    to its version."""

    version: str = Field(..., description="The candidate's adapter version.")
    job: schema.Optional[str] = Field(None, description="Heal Job that made it.")
    created: schema.Optional[datetime.datetime] = Field(None, description="When it was made.")
    reason: schema.Optional[str] = Field(None, description="What the heal fixed and the gate said.")


class RolloutBaseline(Described):
    """The live signals just before a rollout, which the rollback watch compares with."""

    samples: int = Field(0, description="Rows in the window the baseline comes from.")
    rule_conflict: float = Field(0.0, description="Rule conflict before the rollout.")
    class_rates: dict[str, float] = Field(default_factory=dict, description="Predicted class shares before.")
    reference_class_rates: dict[str, float] = Field(
        default_factory=dict, description="Predicted class shares on the training data.")
    expected_class_rates: dict[str, float] = Field(
        default_factory=dict, description="Predicted class shares the heal's gate certified for this version on "
                                          "held-out rows (empty for a version no heal of this model made).")


class RolloutStatus(Described):
    """An adapter change under way, and its rollback watch."""

    from_version: schema.Optional[str] = Field(None, alias="from", description="Version before the change.")
    to: str = Field(..., description="Version being rolled out.")
    strategy: schema.Optional[str] = Field(None, description="RollingRestart or HotSwap.")
    started: schema.Optional[datetime.datetime] = Field(None, description="When the rollout began.")
    complete: schema.Optional[datetime.datetime] = Field(None, description="When every pod served it; the watch starts.")
    baseline: schema.Optional[RolloutBaseline] = Field(None)
    watch: bool = Field(True, description="Whether harm is watched for: not for a rollback, nor a move to base "
                                          "or to the last good version.")
    watched_rows: int = Field(0, description="Live rows the new version alone served during its watch; it becomes "
                                             "the last good version only after at least rollback.minSamples.")


class Performance(Described):
    """A label-free estimate of the served model's accuracy (no label is ever used): from the last
    finished heal that gave one, of its candidate after a promotion, else of the model served before
    that heal. `basis` says which."""

    estimator: str = Field("", description="How it was estimated (the heal Job's estimator).")
    accuracy: schema.Optional[float] = Field(None, description="Estimated accuracy, 0..1; empty when unknown.")
    basis: str = Field("", description='What was estimated: "served before heal <job>" or '
                                       '"candidate <version> after heal <job>".')
    display: str = Field("", description='The accuracy to two decimals, or "unknown" (the EST-ACC column).')
    updated: schema.Optional[datetime.datetime] = Field(None, description="When it was written.")


class SelfHealingModelStatus(Described):
    """Observed state, written by the operator only."""

    phase: schema.Optional[Phase] = Field(None)
    observed_generation: schema.Optional[int] = Field(None, description="metadata.generation last acted on.")
    conditions: t.Annotated[list[Condition], Field(max_length=32)] = Field(
        default_factory=list, description="Ready, ChildrenApplied, DriftDetected, Healing, RolledBack and Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    drift: schema.Optional[DriftStatus] = Field(None)
    adapter: schema.Optional[AdapterStatus] = Field(None)
    last_heal: schema.Optional[LastHeal] = Field(None)
    heals_today: schema.Optional[int] = Field(None, description="Heals started in the last 24 hours.")
    recent_heal_starts: t.Annotated[list[datetime.datetime], Field(max_length=1000)] = Field(
        default_factory=list, description="Start times of the heals of the last 24 hours (the daily budget).")
    history: t.Annotated[list[HistoryEntry], Field(max_length=MAX_HISTORY)] = Field(
        default_factory=list, description=f"The last {MAX_HISTORY} adapter changes, oldest first.")
    candidate: schema.Optional[Candidate] = Field(None)
    performance: schema.Optional[Performance] = Field(None)
    rollout: schema.Optional[RolloutStatus] = Field(None)
    heal_count: schema.Optional[int] = Field(None, description="Heal Jobs launched so far (names the next one).")
    refused_adapters: dict[str, str] = Field(
        default_factory=dict, description="Adapter versions the pods refused to load, and why.")
    url: schema.Optional[str] = Field(
        None, description="In-cluster inference endpoint of the model: POST rows to it "
                          "(http://<model>-serving.<namespace>.svc.cluster.local:8080/predictions/<torchserve name>).")
    replicas: schema.Optional[int] = Field(
        None, description="Model-server pods that exist and are not terminating (the scale subresource's status).")
    ready_replicas: schema.Optional[int] = Field(None, description="Model-server pods that are ready.")
    selector: schema.Optional[str] = Field(
        None, description="Label selector of the model-server pods (for the scale subresource, e.g. an HPA).")


PRINTER_COLUMNS = [
    {"name": "Adapter", "type": "string", "jsonPath": ".status.adapter.current",
     "description": "Adapter version served by all ready pods."},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Drift", "type": "number", "jsonPath": ".status.drift.score",
     "description": "Strongest drift signal relative to its on threshold (>= 1: a signal reached it)."},
    {"name": "Ready", "type": "string", "jsonPath": ".status.adapter.ready",
     "description": "Ready pods serving the desired adapter / pods wanted."},
    {"name": "Est-Acc", "type": "string", "jsonPath": ".status.performance.display",
     "description": "Label-free estimate of the served model's accuracy (status.performance), or unknown."},
    {"name": "URL", "type": "string", "jsonPath": ".status.url",
     "description": "In-cluster inference endpoint (status.url)."},
    {"name": "Desired", "type": "string", "jsonPath": ".spec.adapter.version", "priority": 1},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.healing.mode", "priority": 1},
]

# `kubectl scale shm/NAME --replicas=N` (and an HPA) write spec.replicas.
SCALE = {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
         "labelSelectorPath": ".status.selector"}


class SelfHealingModel(CustomResource, version=API_VERSION, short_names=["shm"],
                       subresources={"status": {}, "scale": SCALE}, printer_columns=PRINTER_COLUMNS):
    """A PyTorch model served by TorchServe pods that heals itself under data drift without new
    labels: drift signals on live traffic start a healing Job, a gate checks its candidate adapter,
    and the operator rolls it out (and back, on harm)."""

    spec: SelfHealingModelSpec
    status: SelfHealingModelStatus = Field(default_factory=SelfHealingModelStatus)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return _shape_descriptions(super().__get_pydantic_json_schema__(core_schema, handler), handler)

    @property
    def torchserve_name(self) -> str:
        """spec.model.name, else the resource name with the characters TorchServe refuses replaced."""
        return self.spec.model.name or self.metadata.name.replace(".", "-")


# ---- generation --------------------------------------------------------------------------------

DEFAULT_OUTPUT = "crds/selfhealingmodels.yaml"
HEADER = "# Generated from operator/crd.py by `python -m shm_operator.crd`; do not edit.\n"


def crd_manifest() -> dict:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition, as a dict."""
    registry = CustomResourceRegistry(API_GROUP)
    registry.register_model(SelfHealingModel)
    (definition,) = list(registry)
    return definition.kubernetes_resource()


def crd_yaml() -> str:
    """The CRD as YAML text; the same models always give the same bytes (declaration order kept)."""
    return HEADER + yaml.safe_dump(crd_manifest(), sort_keys=False, width=100, allow_unicode=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shm_operator.crd",
                                     description="Print or write the SelfHealingModel CRD.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--output", "-o", type=Path, help="write the CRD to this file")
    group.add_argument("--write", action="store_const", dest="output", const=Path(DEFAULT_OUTPUT),
                       help=f"write the CRD to {DEFAULT_OUTPUT} (from the repository root)")
    group.add_argument("--check", type=Path, help="exit 1 if this file differs from the generated CRD")
    args = parser.parse_args(argv)
    text = crd_yaml()
    if args.check:
        current = args.check.read_text() if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is stale: regenerate it with python -m shm_operator.crd -o {args.check}",
                  file=sys.stderr)
            return 1
        return 0
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
