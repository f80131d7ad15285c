"""The operator's judgement as pure functions: no Kubernetes, no I/O, the time passed in.

Handlers gather the facts (spec, status, pods, the heal Job's result read by `job_result`) and
apply what these functions decide, so every branch of the operator's reasoning is unit-tested
without a cluster. Reasons are written for people (status messages, Events); codes are
CamelCase and fit a condition's reason. Times are timezone-aware datetimes or RFC 3339 strings as
found in a status.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Mapping, NamedTuple, Sequence

from pydantic import ValidationError

# The one rule for naming a new adapter version lives with the registry; re-exported for bench.loop.
from model_handler.registry import BASE_VERSION, next_version, version_number  # noqa: F401
from shm_operator.crd import (CONDITION_REASON, CONDITION_TYPE, MAX_HISTORY, SEMANTICS, HealingMode, Phase,
                              RollbackSpec, SelfHealingModelSpec)
from shm_operator.job_result import JobResult, parse_job_result  # noqa: F401  (parse_job_result: for bench.loop)

DAY = timedelta(days=1)
CONDITION_MESSAGE_LIMIT = 32768        # metav1.Condition.message
DNS_LABEL_LIMIT = 63                   # a Job's name becomes its pods' job-name label value
UTC = timezone.utc


@dataclass(frozen=True)
class Decision:
    """Whether to act, and why; `retry_after` (seconds) is when the answer may change by itself."""

    act: bool
    reason: str
    code: str
    retry_after: float | None = None


# ---- time --------------------------------------------------------------------------------------

def parse_time(value: datetime | str | None) -> datetime | None:
    """A status timestamp as an aware datetime; naive times are refused (they hide a zone bug)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"timestamp {value.isoformat()} has no timezone")
    return value


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC to the second, as Kubernetes writes metav1.Time."""
    return parse_time(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def recent_heals(starts: Sequence[datetime | str], now: datetime) -> list[datetime]:
    """Heal start times of the last 24 hours, oldest first (what status.recentHealStarts keeps)."""
    return sorted(t for t in map(parse_time, starts) if t is not None and now - t < DAY)


# ---- healing -----------------------------------------------------------------------------------

def should_heal(*, now: datetime, drifting: bool, mode: HealingMode | str, healing_job: str | None = None,
                phase: Phase | str | None = None, candidate: str | None = None,
                spec_problems: Sequence[str] = (), last_heal_finished: datetime | str | None = None,
                cooldown_seconds: float, recent_heal_starts: Sequence[datetime | str] = (),
                max_heals_per_day: int) -> Decision:
    """Start a heal only when drift is declared and nothing else is under way or forbids it.

    The checks run from the most to the least fundamental, so the reason names what a person
    would have to change first. The cooldown runs from `last_heal_finished` (pass the start
    time of a heal whose end is unknown). The daily budget counts starts in a sliding 24 hours,
    so a burst around midnight cannot spend two days' budget at once.
    """
    now = parse_time(now)
    if healing_job:
        return Decision(False, f"already healing (job {healing_job})", "HealInProgress")
    if not drifting:
        return Decision(False, "no drift declared", "NoDrift")
    if HealingMode(mode) is HealingMode.OFF:
        return Decision(False, "mode Off", "HealingOff")
    if spec_problems:
        more = f" (and {len(spec_problems) - 1} more)" if len(spec_problems) > 1 else ""
        return Decision(False, f"spec is invalid: {spec_problems[0]}{more}", "InvalidSpec")
    phase = getattr(phase, "value", phase)          # a phase unknown to this version is no rollout
    if phase in (Phase.PROMOTING.value, Phase.ROLLING_OUT.value):
        return Decision(False, f"a rollout is in progress (phase {phase})", "RolloutInProgress")
    if candidate:
        return Decision(False, f"candidate {candidate} awaits approval", "AwaitingApproval")
    finished = parse_time(last_heal_finished)
    if finished is not None:
        left = cooldown_seconds - (now - finished).total_seconds()
        if left > 0:
            return Decision(False, f"cooldown: {math.ceil(left)}s left", "CooldownActive", math.ceil(left))
    starts = recent_heals(recent_heal_starts, now)
    if len(starts) >= max_heals_per_day:
        free_at = starts[len(starts) - max_heals_per_day] + DAY
        return Decision(False, f"daily budget spent ({len(starts)}/{max_heals_per_day})", "DailyBudgetSpent",
                        math.ceil((free_at - now).total_seconds()))
    return Decision(True, f"drift declared: heal {len(starts) + 1}/{max_heals_per_day} of the last 24h",
                    "HealNeeded")


class HealTarget(NamedTuple):
    parent: str
    version: str


def heal_job_target(job: Mapping) -> HealTarget | None:
    """The parent and version a heal Job was created with, from its container's arguments (what it
    really runs). A heal's version is chosen once, when its Job is created: a later pass that finds
    the Job (an operator restarted before it wrote the status) must take the version from here,
    never choose again from the registry, which by then may hold the Job's own candidate. None if
    the Job does not say (not a heal Job of this operator)."""
    containers = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    args = [str(a) for a in ((containers[0].get("args") or []) if containers else [])]

    def option(name: str) -> str | None:
        for i, arg in enumerate(args):
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
        return None

    version, parent = option("--version"), option("--parent") or BASE_VERSION
    return HealTarget(parent, version) if version else None


def heal_job_name(model_name: str, n: int) -> str:
    """`<model>-heal-<n>`, a valid DNS-1123 label (the Job controller copies the name into a pod
    label, so at most 63 characters). A name that must be shortened or cleaned keeps a hash of
    the original, so two long model names never share Jobs."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"heal number must be an integer >= 1, got {n!r}")
    if not model_name:
        raise ValueError("model name is empty")
    suffix = f"-heal-{n}"
    clean = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")
    if clean == model_name and len(clean) + len(suffix) <= DNS_LABEL_LIMIT:
        return clean + suffix
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:8]
    prefix = clean[: DNS_LABEL_LIMIT - len(suffix) - len(digest) - 1].rstrip("-")
    return f"{prefix}-{digest}{suffix}" if prefix else f"h{digest}{suffix}"


# ---- drift ---------------------------------------------------------------------------------------

DRIFT_REASONS = {"input": "InputShift", "label": "LabelShift", "rules": "RuleConflict"}


def drift_reason(signals: Sequence[str]) -> str:
    """The DriftDetected reason for the signals on: InputShift, LabelShift, RuleConflict, or
    SeveralSignals."""
    known = [s for s in DRIFT_REASONS if s in set(signals)]
    unknown = sorted(set(signals) - set(DRIFT_REASONS))
    if unknown:
        raise ValueError(f"unknown drift signals {unknown}; known: {list(DRIFT_REASONS)}")
    if not known:
        raise ValueError("no signal is on: drift has no reason")
    return DRIFT_REASONS[known[0]] if len(known) == 1 else "SeveralSignals"


# ---- what a finished heal leads to ------------------------------------------------------------

class Promotion(NamedTuple):
    action: str      # "promote" | "await-approval" | "reject" | "nothing"
    reason: str


def approve_command(name: str, namespace: str, version: str) -> str:
    """The command a person runs to promote a candidate."""
    return (f"kubectl patch shm {name} -n {namespace} --type merge "
            f"-p '{{\"spec\":{{\"adapter\":{{\"version\":\"{version}\"}}}}}}'")


def promotion_action(mode: HealingMode | str, result: JobResult) -> Promotion:
    """What to do with a finished heal, from the Job's verdict. Only a candidate that passed the
    safety checks is ever offered, and only one that independent evidence supports (verdict
    promote) is promoted without a person: in Auto mode. In Manual mode, or when healing was turned
    Off while the Job ran, or when the verdict is approve, it waits for a person."""
    if result.error:
        return Promotion("reject", result.error)
    if result.verdict == "nothing":
        return Promotion("nothing", result.reason or "nothing to fix")
    if result.verdict not in ("promote", "approve") or not result.promotable or not result.version:
        why = result.reason or (f"gate failed: {', '.join(result.failed_checks)}" if result.failed_checks
                                else "no promotable candidate")
        return Promotion("reject", why)
    mode = HealingMode(mode)
    if result.verdict == "approve":
        return Promotion("await-approval",
                         f"{result.version} passed the safety checks but no independent evidence supports the "
                         f"fix{': ' + result.reason if result.reason else ''}; "
                         f"set spec.adapter.version: {result.version} to promote it")
    if mode is HealingMode.AUTO:
        return Promotion("promote", f"{result.version} passed the gate: {result.reason}".rstrip(": "))
    why = "Manual mode" if mode is HealingMode.MANUAL else "healing was turned Off while the Job ran"
    return Promotion("await-approval",
                     f"{why}: {result.version} passed the gate; "
                     f"set spec.adapter.version: {result.version} to promote it")


def performance(last_heal: Mapping, now: datetime) -> dict | None:
    """status.performance from a finished heal's label-free estimate: the candidate's accuracy
    after a promotion, else the served model's before the heal (what still serves). None if the
    heal gave no estimate (an older Job, or one that failed before estimating): the last known
    estimate stays, and its basis says which heal it came from."""
    estimate = last_heal.get("estimate")
    if not isinstance(estimate, Mapping) or last_heal.get("result") in (None, "Running"):
        return None
    job = last_heal.get("job") or "?"
    if last_heal["result"] == "Promoted":
        accuracy, basis = estimate.get("after"), f"candidate {last_heal.get('version')} after heal {job}"
    else:
        accuracy, basis = estimate.get("before"), f"served before heal {job}"
    return {"estimator": estimate.get("estimator") or "", "accuracy": accuracy, "basis": basis,
            "display": "unknown" if accuracy is None else f"{accuracy:.2f}", "updated": format_time(now)}


# ---- rollback ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RolloutSignals:
    """Live signals over a window: rows, rule conflict (0..1), predicted class shares."""

    samples: int
    rule_conflict: float
    class_rates: Mapping[str, float] = field(default_factory=dict)


_ROLLBACK = RollbackSpec.model_fields   # the defaults are spec.promotion.rollback's, in crd.py


@dataclass(frozen=True)
class RollbackLimits:
    max_conflict_increase: float = _ROLLBACK["max_conflict_increase"].default
    max_class_rate_ratio: float = _ROLLBACK["max_class_rate_ratio"].default
    class_rate_tolerance: float = _ROLLBACK["class_rate_tolerance"].default
    min_samples: int = _ROLLBACK["min_samples"].default
    watch_seconds: float | None = None     # None: no time limit (spec.promotion.rollback.watchSeconds sets one)
    automatic: bool = _ROLLBACK["automatic"].default

    @classmethod
    def from_spec(cls, rollback: RollbackSpec) -> RollbackLimits:
        return cls(rollback.max_conflict_increase, rollback.max_class_rate_ratio, rollback.class_rate_tolerance,
                   rollback.min_samples, rollback.watch_seconds, rollback.automatic)


def _harms(pre: RolloutSignals, live: RolloutSignals, limits: RollbackLimits) -> list[str]:
    """Each way the live window is worse than before the rollout, beyond the limits.

    Class rates are compared as ratios of shares smoothed by half a row each (so a class absent
    on one side gives a finite ratio); a change within `class_rate_tolerance` is never harm.
    """
    harms = []
    rise = live.rule_conflict - pre.rule_conflict
    if rise > limits.max_conflict_increase:
        harms.append(f"rule conflict rose {pre.rule_conflict:.3f} -> {live.rule_conflict:.3f} "
                     f"(+{rise:.3f} > {limits.max_conflict_increase:g})")
    for name in sorted(set(pre.class_rates) | set(live.class_rates)):
        before, after = pre.class_rates.get(name, 0.0), live.class_rates.get(name, 0.0)
        if abs(after - before) <= limits.class_rate_tolerance:
            continue
        smoothed_before = before + 0.5 / pre.samples
        smoothed_after = after + 0.5 / live.samples
        ratio = max(smoothed_after / smoothed_before, smoothed_before / smoothed_after)
        if ratio > limits.max_class_rate_ratio:
            harms.append(f"class {name} rate {before:.3f} -> {after:.3f} "
                         f"(x{ratio:.2f} > {limits.max_class_rate_ratio:g})")
    return harms


def rollback_check(pre: RolloutSignals, live: RolloutSignals, limits: RollbackLimits,
                   elapsed_seconds: float | None = None) -> Decision:
    """Roll back when the new adapter visibly hurts: rule conflict up, or a class rate swinging.

    Too few rows since the rollout (or before it) means wait, never roll back: a fresh adapter
    judged on a handful of requests would be rolled back by noise.
    """
    if pre.samples < limits.min_samples:
        return Decision(False, f"no baseline to compare with ({pre.samples}/{limits.min_samples} rows before "
                               "the rollout)", "NoBaseline")
    if live.samples < limits.min_samples:
        return Decision(False, f"waiting for samples ({live.samples}/{limits.min_samples} since the rollout)",
                        "InsufficientSamples")
    harms = _harms(pre, live, limits)
    if harms and limits.automatic:
        return Decision(True, "; ".join(harms), "HarmDetected")
    if harms:
        return Decision(False, "harm detected, automatic rollback is off: " + "; ".join(harms), "HarmNotRolledBack")
    if limits.watch_seconds is not None and elapsed_seconds is not None and elapsed_seconds >= limits.watch_seconds:
        return Decision(False, f"no harm in {elapsed_seconds:.0f}s on {live.samples} rows: watch complete",
                        "WatchComplete")
    return Decision(False, f"no harm so far ({live.samples} rows)", "NoHarm")


# ---- what the schema cannot say -----------------------------------------------------------------

def field_path(loc: Sequence[str | int]) -> str:
    """("spec", "rules", 2, "when") -> "spec.rules[2].when"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validate_spec_semantics(spec: Mapping | SelfHealingModelSpec) -> list[str]:
    """Problems of a spec as '<field>: <what>' lines: the models' schema errors and what the CRD
    schema cannot express (the `semantics` validators beside the fields in crd.py), so one call
    covers everything; the sandbox has no API server to validate for it."""
    return validated_spec(spec)[1]


def validated_spec(spec: Mapping | SelfHealingModelSpec) -> tuple[SelfHealingModelSpec | None, list[str]]:
    """(the spec's model, every default filled in, and no problem) or (None, its problems), from one
    validation (`validate_spec_semantics`)."""
    if isinstance(spec, SelfHealingModelSpec):
        spec = spec.model_dump(mode="json", by_alias=True)
    try:
        return SelfHealingModelSpec.model_validate(dict(spec), context=SEMANTICS), []
    except ValidationError as err:
        return None, [f"{field_path(('spec', *e['loc']))}: {e['msg']}" for e in err.errors()]


# ---- conditions and history --------------------------------------------------------------------

def condition(type_: str, status: bool | str, reason: str, message: str, now: datetime,
              generation: int | None = None) -> dict:
    """A status condition (metav1.Condition, camelCase as in the CRD)."""
    if isinstance(status, bool):
        status = "True" if status else "False"
    if not re.fullmatch(CONDITION_TYPE, type_):
        raise ValueError(f"condition type must be CamelCase such as Ready, got {type_!r}")
    if status not in ("True", "False", "Unknown"):
        raise ValueError(f"condition status must be True, False or Unknown, got {status!r}")
    if not re.fullmatch(CONDITION_REASON, reason):
        raise ValueError(f"condition reason must be CamelCase (letters, digits, '_', ',', ':'), got {reason!r}")
    if len(message) > CONDITION_MESSAGE_LIMIT:
        message = message[: CONDITION_MESSAGE_LIMIT - 3] + "..."
    result = {"type": type_, "status": status, "reason": reason, "message": message,
              "lastTransitionTime": format_time(now)}
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def set_condition(conditions: Sequence[Mapping], new: Mapping) -> list[dict]:
    """The list with `new` in place of the condition of its type (appended if absent). An unchanged
    status keeps the old lastTransitionTime: it says since when, not when last checked."""
    result, replaced = [], False
    for old in conditions:
        if old.get("type") != new["type"]:
            result.append(dict(old))
            continue
        merged = dict(new)
        if old.get("status") == new["status"] and old.get("lastTransitionTime"):
            merged["lastTransitionTime"] = old["lastTransitionTime"]
        result.append(merged)
        replaced = True
    return result if replaced else [*result, dict(new)]


def append_history(history: Sequence[Mapping], *, version: str, from_version: str | None, now: datetime,
                   reason: str, by: str, limit: int = MAX_HISTORY) -> list[dict]:
    """status.history with one more adapter change, keeping the newest `limit` entries."""
    entry = {"version": version, "from": from_version, "at": format_time(now), "reason": reason, "by": by}
    return [*map(dict, history), entry][-limit:]
