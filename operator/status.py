"""Small helpers that write the curated status: conditions, phase, time stamps, the typed spec.

Handlers keep a working copy of the status they were given and update it alongside the Kopf
patch, so later steps of the same pass see earlier ones' writes. The reconcile handler and the
timer run concurrently on one object, each from a copy that may be a moment old: a field either
has one owner, or is written by key (status.adapter) or by a key-aware function (conditions,
rollout, phase).

Every status write is a Kopf patch function, none a merge patch: Kopf sends a pass's functions as
one JSON patch under a resourceVersion test, after any merge patch, as a second request. Mixing the
two let a reader see half a pass, e.g. `lastHeal.result: Failed` while the Healing condition still
said True. On a conflict Kopf keeps the functions and applies them on the freshest body next cycle.
"""
from __future__ import annotations

import copy
import datetime as dt
import functools

from shm_operator import decisions
from shm_operator.crd import Phase, SelfHealingModelSpec


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


iso = decisions.format_time
parse_time = decisions.parse_time


def full_spec(spec: dict) -> dict:
    """The spec with every default filled in, camelCase, as plain JSON (validated beforehand)."""
    return SelfHealingModelSpec.model_validate(dict(spec)).model_dump(mode="json")


def set_condition_in(patch, status: dict, type_: str, ok: bool, reason: str, message: str,
                     *, t: dt.datetime, generation: int | None = None) -> None:
    """Set one condition. A merge patch replaces the whole list, so two handlers setting different
    conditions at once (the reconcile handler and the timer run concurrently) would erase each
    other's: the change is applied by key to the freshest body. An unchanged condition is not
    written."""
    new = decisions.condition(type_, ok, reason, message, t, generation)
    old = next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)
    if old is not None and all(old.get(k) == new.get(k) for k in ("status", "reason", "message", "observedGeneration")):
        return
    status["conditions"] = decisions.set_condition(status.get("conditions") or [], new)
    patch.fns.append(functools.partial(_upsert_condition, new))


def _upsert_condition(new: dict, body: dict) -> None:
    fresh = body.setdefault("status", {})
    fresh["conditions"] = decisions.set_condition(fresh.get("conditions") or [], new)


def update(patch, status: dict, **fields) -> None:
    """Write top-level status fields to the patch and the working copy, with merge-patch meaning
    (None deletes, dicts merge key by key). Only for fields one handler owns; shared ones go
    through update_adapter, rollout.update_rollout and refresh_phase."""
    for key, value in fields.items():
        status[key] = value
    patch.fns.append(functools.partial(_merge_status, copy.deepcopy(fields)))


def update_adapter(patch, status: dict, **keys) -> None:
    """Write some keys of status.adapter and leave the others to their owner: the reconcile
    handler owns `desired`, the timer what the pods report (`current`, `ready`, ...) and
    `lastGood`. Only the given keys are written, so a timer pass that began before a spec change
    cannot write the old `desired` back."""
    status["adapter"] = {**(status.get("adapter") or {}), **keys}
    patch.fns.append(functools.partial(_merge_status, {"adapter": copy.deepcopy(keys)}))


def _merge_status(fields: dict, body: dict) -> None:
    body["status"] = merged(body.get("status") or {}, fields)


def merged(target, change):
    """`change` applied to `target` as a JSON merge patch (RFC 7386) would be."""
    if not isinstance(change, dict):
        return copy.deepcopy(change)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in change.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merged(result.get(key), value)
    return result


def written_status(patch, body: dict | None = None) -> dict:
    """The status this patch would leave on `body` (for tests and dry runs)."""
    fresh = copy.deepcopy(body or {})
    for fn in patch.fns:
        fn(fresh)
    return fresh.get("status") or {}


def without_nulls(value):
    """`value` as a merge patch would store it: null keys dropped, at every depth."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def refresh_phase(patch, status: dict) -> None:
    """Recompute `phase` on the freshest body after this pass's own writes (a patch function), so a
    pass that began before another handler's write never leaves a phase that contradicts it."""
    status["phase"] = phase_of(status)
    patch.fns.append(_refresh_phase)


def _refresh_phase(body: dict) -> None:
    fresh = body.setdefault("status", {})
    phase = phase_of(fresh)
    if fresh.get("phase") != phase:
        fresh["phase"] = phase


def condition_true(status: dict, type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in status.get("conditions") or [])


# Reasons of a False Ready that are not pod failures (any other names why pods fail to serve).
NOT_FAILURES = frozenset({"PodsReady", "PodsNotReady", "AdapterNotServed", "InvalidSpec"})


def degraded_reason(status: dict) -> str | None:
    """The reason of a True Degraded condition, None if the model is not Degraded."""
    return next((c.get("reason") for c in status.get("conditions") or []
                 if c.get("type") == "Degraded" and c.get("status") == "True"), None)


def ready_reason(status: dict) -> str | None:
    """The reason of a False Ready condition, None if Ready is True or absent."""
    return next((c.get("reason") for c in status.get("conditions") or []
                 if c.get("type") == "Ready" and c.get("status") == "False"), None)


def pods_failing(status: dict) -> bool:
    """Whether the Ready condition names pods that fail to serve (not pods still starting)."""
    reason = ready_reason(status)
    return reason is not None and reason not in NOT_FAILURES


def phase_of(status: dict) -> str:
    """One word for `kubectl get shm`, from the most to the least urgent state."""
    adapter = status.get("adapter") or {}
    if ready_reason(status) == "InvalidSpec":
        return Phase.FAILED.value
    if status.get("readyReplicas") == 0 and adapter.get("podsTotal"):   # nothing serves
        return Phase.UNAVAILABLE.value if pods_failing(status) else Phase.PENDING.value
    if (status.get("lastHeal") or {}).get("result") == "Running":
        return Phase.HEALING.value
    if status.get("candidate"):
        return Phase.PROMOTING.value
    if status.get("rollout"):
        return Phase.ROLLING_OUT.value
    if not adapter.get("podsTotal"):
        return Phase.PENDING.value
    if condition_true(status, "Degraded") or pods_failing(status):
        return Phase.DEGRADED.value
    if ((status.get("drift") or {}).get("trigger") or {}).get("drifting"):
        return Phase.DRIFTING.value
    return Phase.SERVING.value
