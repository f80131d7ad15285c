"""Small helpers that write the curated status: conditions, phase, time stamps, the typed spec.

Handlers keep a working copy of the status they were given and update it alongside the Kopf
patch, so later steps of the same pass see earlier ones' writes.
"""
from __future__ import annotations

import datetime as dt

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
                     t: dt.datetime, generation: int | None = None) -> None:
    """Set one condition. An unchanged condition is not written: status is patched by several
    handlers, and a merge patch replaces the whole list, so writing only real changes keeps one
    handler from erasing a condition another just set."""
    new = decisions.condition(type_, ok, reason, message, t, generation)
    old = next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)
    if old is not None and all(old.get(k) == new.get(k) for k in ("status", "reason", "message", "observedGeneration")):
        return
    conditions = decisions.set_condition(status.get("conditions") or [], new)
    status["conditions"] = conditions
    patch.status["conditions"] = conditions


def update(patch, status: dict, **fields) -> None:
    """Write top-level status fields to the patch and the working copy."""
    for key, value in fields.items():
        patch.status[key] = value
        status[key] = value


def condition_true(status: dict, type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in status.get("conditions") or [])


def phase_of(status: dict) -> str:
    """One word for `kubectl get shm`, from the most to the least urgent state."""
    adapter = status.get("adapter") or {}
    if any(c.get("type") == "Ready" and c.get("status") == "False" and c.get("reason") == "InvalidSpec"
           for c in status.get("conditions") or []):
        return Phase.FAILED.value
    if (status.get("lastHeal") or {}).get("result") == "Running":
        return Phase.HEALING.value
    if status.get("candidate"):
        return Phase.PROMOTING.value
    if status.get("rollout"):
        return Phase.ROLLING_OUT.value
    if not adapter.get("podsTotal"):
        return Phase.PENDING.value
    if condition_true(status, "Degraded"):
        return Phase.DEGRADED.value
    if ((status.get("drift") or {}).get("trigger") or {}).get("drifting"):
        return Phase.DRIFTING.value
    return Phase.SERVING.value
