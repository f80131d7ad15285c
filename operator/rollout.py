"""Rollouts of adapter versions: accept a new spec.adapter.version, watch it, roll it back.

One module holds the whole protocol. `change_version` is how the operator itself changes
spec.adapter.version (a promotion or a rollback): the same PATCH carries the CHANGE_ANNOTATION
saying who and why. The reconcile handler calls `accept_version` before it renders the children,
so exactly one handler decides which version the pods serve; it consumes that annotation, takes a
baseline (a drift window of the version being replaced) and starts status.rollout. The timer's
`watch_rollout` completes the rollout once every pod serves it, compares live windows with the
baseline for rollback.watchSeconds and calls `roll_back` on harm; a watch that live traffic vouched
for moves status.adapter.lastGood. A version the registry does not have is refused in
the status and the pods keep serving the last accepted one. An accepted change starts a rollout:
RollingRestart puts the version in the pod template (Kubernetes replaces pods one at a time and
readiness gates traffic: with maxUnavailable 0 no request fails); HotSwap writes it into the
ConfigMap the handler watches, and pods swap between batches without restarting.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
from typing import Mapping

import kopf

from model_handler.adapters import AdapterError, AdapterShapes, verify_adapter
from model_handler.registry import (AdapterNotFoundError, AdapterRegistry, CorruptAdapterError,
                                    RegistryError)
from shm_operator import decisions, memory, metrics
from shm_operator.context import ModelPass
from shm_operator.crd import RolloutBaseline, RolloutStatus, SelfHealingModelStatus
from shm_operator.memory import ModelMemory
from shm_operator.names import BASE_VERSION, CHANGE_ANNOTATION
from shm_operator.policy import baseline, baseline_of, rollout_verdict, vouched
from shm_operator.signals import WindowState
from shm_operator.status import iso, without_nulls

log = logging.getLogger(__name__)
# Degraded reasons that a newly accepted version ends (the refused request is no longer asked for)
REFUSAL_REASONS = ("AdapterNotFound", "AdapterCorrupt", "RegistryUnreachable")


def registry_for(ctx: ModelPass) -> AdapterRegistry:
    return AdapterRegistry(ctx.spec.storage.uri, ctx.namespace, ctx.name)


class WaitingForBaseline(kopf.TemporaryError):
    """A watched rollout waits for a drift window of the version it replaces; the pods keep serving
    `serving` meanwhile, and Kopf retries the reconcile after `delay`."""

    waiting = True   # not counted as a reconcile error (metrics.count_errors)

    def __init__(self, message: str, *, serving: str, delay: float):
        super().__init__(message, delay=delay)
        self.serving = serving


async def accept_version(ctx: ModelPass, *, runtime: dt.timedelta | None = None) -> str:
    """Return the version the pods must serve now; record the change (or the refusal) in status.
    Raises WaitingForBaseline while a watched rollout waits for its baseline (`baseline_wait`)."""
    requested, accepted = ctx.spec.adapter.version, ctx.adapter.desired
    if requested == accepted:   # e.g. a person patched back after a refused version: nothing to roll
        clear_refusal(ctx, requested)
        clear_pending(ctx)   # patched back while a rollout waited
        return accepted
    fallback = accepted or BASE_VERSION
    if requested != BASE_VERSION and not await usable(ctx, requested, fallback):
        return fallback
    if accepted is None:  # first reconcile of this resource: nothing to roll from
        return requested
    by, reason, annotated = change_of(ctx.body, requested)
    watch = watched(by, requested, ctx.status)
    pre = baseline_of(ctx.working.get("drift") or {}, accepted)
    if watch and pre is None:
        wait = baseline_wait(ctx, serving=accepted, requested=requested, runtime=runtime)
        if wait is not None:
            if ctx.adapter.pending != requested:
                kopf.info(ctx.body, reason="WaitingForBaseline", message=wait)
            ctx.update_adapter(pending=requested)
            raise WaitingForBaseline(wait, serving=accepted, delay=ctx.spec.drift.check_interval_seconds)
        kopf.warn(ctx.body, reason="NoBaseline",
                  message=f"no drift window of {accepted} alone: the rollback watch of {requested} has no "
                          "baseline and cannot judge harm")
    if annotated:
        ctx.patch.metadata.annotations[CHANGE_ANNOTATION] = None  # consumed: a later change is someone else's
    strategy = ctx.spec.promotion.strategy.value
    status = ctx.status
    if status.candidate is not None and status.candidate.version == requested:
        ctx.update(candidate=None)   # promoted; any other candidate is the timer's to keep
    ctx.update(history=decisions.append_history(ctx.working.get("history") or [], version=requested,
                                                from_version=accepted, now=ctx.t, reason=reason[:300], by=by))
    start_rollout(ctx.patch, ctx.working,
                  {"from": accepted, "to": requested, "strategy": strategy, "started": iso(ctx.t), "complete": None,
                   "watch": watch, "baseline": {**(pre or baseline({})),
                                                "referenceClassRates": ctx.memory.reference_class_rates,
                                                "expectedClassRates": expected_rates(ctx, requested)}})
    clear_pending(ctx)
    clear_refusal(ctx, requested)
    kopf.info(ctx.body, reason="RollingOut",
              message=f"adapter {accepted} -> {requested} ({strategy}, by {by}: {reason})")
    metrics.ADAPTER_CHANGES.labels(ctx.namespace, ctx.name, by).inc()
    if requested != BASE_VERSION:
        try:
            await asyncio.to_thread(registry_for(ctx).set_state, requested, "promoted",
                                    reason or "spec.adapter.version")
        except RegistryError as err:
            log.warning("could not mark %s promoted in the registry: %s", requested, err)
    return requested


def change_of(body, requested: str) -> tuple[str, str, bool]:
    """(who, why, whether the CHANGE_ANNOTATION is present) of the change to `requested`: the
    annotation `change_version` wrote with it, else a person's edit."""
    try:
        change = json.loads((body.get("metadata", {}).get("annotations") or {}).get(CHANGE_ANNOTATION) or "{}")
    except ValueError:
        change = {}
    if change.get("version") == requested:
        return change.get("by", "operator"), change.get("reason", ""), bool(change)
    return "user", "spec.adapter.version changed by a person", bool(change)


async def usable(ctx: ModelPass, requested: str, fallback: str) -> bool:
    """Whether `requested` is in the registry and intact; if not, say so (Degraded and an Event) and
    the pods keep serving `fallback`. Raises kopf.TemporaryError while the registry is unreachable."""
    registry = registry_for(ctx)
    try:
        # no pod-derived expectations here: a new spec.model.archive may come with this very version,
        # and the pods reporting the old backbone must not veto it (the new pods check it)
        meta = await asyncio.to_thread(verified_meta, registry, requested)
    except AdapterNotFoundError as err:
        ctx.set_condition("Degraded", True, "AdapterNotFound", str(err))
        kopf.warn(ctx.body, reason="AdapterNotFound",
                  message=f"spec.adapter.version {requested!r} is not in the registry; pods keep "
                          f"serving {fallback!r}")
        return False
    except (CorruptAdapterError, AdapterError) as err:
        ctx.set_condition("Degraded", True, "AdapterCorrupt", str(err)[:1000])
        kopf.warn(ctx.body, reason="AdapterCorrupt",
                  message=f"spec.adapter.version {requested!r} is corrupt in the registry ({str(err)[:300]}); "
                          f"pods keep serving {fallback!r}")
        return False
    except RegistryError as err:
        # The condition and Event are written with this pass's patch even though the handler
        # is retried: Kopf applies the patch whatever the handler's outcome.
        ctx.set_condition("Degraded", True, "RegistryUnreachable", str(err)[:1000])
        kopf.warn(ctx.body, reason="RegistryUnreachable",
                  message=f"cannot check {requested!r}: {str(err)[:300]}; pods keep serving {fallback!r}")
        raise kopf.TemporaryError(f"registry unreachable while checking {requested}: {err}", delay=10) from err
    if meta.state == "rejected":
        kopf.warn(ctx.body, reason="RejectedAdapter",
                  message=f"{requested} was refused by the promotion gate ({meta.reason[:200]}); serving it "
                          f"because spec.adapter.version says so")
    return True


def clear_refusal(ctx: ModelPass, version: str) -> None:
    """A refused version (missing, corrupt, registry down) is no longer asked for: not Degraded."""
    if any(c.type == "Degraded" and c.status == "True" and c.reason in REFUSAL_REASONS
           for c in ctx.status.conditions):
        ctx.set_condition("Degraded", False, "AdapterAccepted", f"serving {version}")


def verified_meta(registry: AdapterRegistry, version: str, shapes: AdapterShapes = AdapterShapes(),
                  backbone_hash: str | None = None):
    """The version's meta, after every check the pods and the heal Job run (`adapters.verify_adapter`:
    sha256, backbone hash where known, safetensors, tensor names and shapes, finite values, class
    prior), torch-free. Adapters are kilobytes, so a corrupt or truncated candidate is refused here,
    before any pod is asked to load it (the pods check again)."""
    return verify_adapter(registry, version, shapes, backbone_hash).meta


def adapter_expected(memo: ModelMemory | Mapping | None) -> tuple[AdapterShapes, str | None]:
    """What the served model asks of a heal Job's candidate, as far as the operator knows: the
    feature and class counts of the reference profile the pods ship, and the backbone hash they
    report (both unknown before a pod has answered: then the adapter's tensors must only agree with
    each other). The Job healed the model these pods serve, so a candidate for another backbone is
    refused here, as the pods would refuse it."""
    remembered = memo if isinstance(memo, ModelMemory) else memory.of(memo if memo is not None else {})
    window = remembered.window
    reference = window.reference
    shapes = AdapterShapes(len(reference.features), len(reference.classes)) if reference else AdapterShapes()
    return shapes, window.backbone_hash or None


def candidate_problem(registry: AdapterRegistry, version: str, reported_sha256: str | None,
                      shapes: AdapterShapes = AdapterShapes(), backbone_hash: str | None = None) -> str | None:
    """Why a heal Job's candidate cannot be promoted or offered, or None if it can: it must be in the
    registry, intact (`verified_meta`), and the very file the Job reported (its sha256). A Job that
    crashed mid-write, a bad disk or another writer must not turn a passing gate into a rollout of
    something else. RegistryError (unreachable storage) is raised: that is a retry, not a verdict."""
    try:
        meta = verified_meta(registry, version, shapes, backbone_hash)
    except (AdapterNotFoundError, CorruptAdapterError, AdapterError) as err:
        return f"candidate {version} is unusable in the registry: {err}"
    if reported_sha256 and meta.sha256 != reported_sha256:
        return (f"candidate {version} in the registry (sha256 {meta.sha256}) is not the file the heal Job "
                f"wrote (sha256 {reported_sha256})")
    return None


def watched(by: str, version: str, status: SelfHealingModelStatus) -> bool:
    """Is this rollout watched for harm (and rolled back on it)? Not a rollback itself, and not a
    move to `base` or to the last good version: those are the safe harbours a person (or the
    operator) retreats to, and the operator must never fight such a retreat."""
    return by != "rollback" and version not in (BASE_VERSION, status.adapter and status.adapter.last_good)


def clear_pending(ctx: ModelPass) -> None:
    if ctx.adapter.pending:
        ctx.update_adapter(pending=None)


def expected_rates(ctx: ModelPass, version: str) -> dict:
    """The class shares the heal that made `version` certified on held-out rows, if it was the last."""
    last = ctx.last_heal
    return dict(last.class_rates or {}) if last.version == version else {}


def baseline_wait(ctx: ModelPass, *, serving: str, requested: str, runtime: dt.timedelta | None) -> str | None:
    """Why `requested` should wait for a window of `serving`, or None to roll out without one.
    Wait only while traffic fills a window (an idle model would wait in vain) and for at most
    rollback.watchSeconds (if a window takes longer, the watch could not judge the new one either)."""
    limit, drift = ctx.spec.promotion.rollback.watch_seconds, ctx.spec.drift
    waited = runtime.total_seconds() if runtime is not None else 0.0
    traffic_at = ctx.memory.traffic_at
    recent = traffic_at is not None and (ctx.t - traffic_at).total_seconds() <= 3 * drift.check_interval_seconds
    if not recent or waited >= limit:
        return None
    rows = ctx.memory.window_rows
    return (f"{requested} waits for a drift window of {serving} alone ({rows}/{drift.window_rows} rows, "
            f"{waited:.0f}s of at most {limit}s): its rollback watch compares with that window")


async def watch_rollout(ctx: ModelPass, *, fresh: dict | None) -> None:
    """Once every pod serves the new adapter, compare live windows with the pre-rollout baseline
    for watchSeconds; roll back on harm, else make it the last good adapter, if live traffic
    (at least rollback.minSamples rows) vouched for it."""
    seen = ctx.status.rollout
    if seen is None:
        return
    rollout = dict(ctx.working["rollout"])   # the stored form, changed and written back whole
    if seen.complete is None:
        return await finish_rollout(ctx, seen, rollout)
    limits = decisions.RollbackLimits.from_spec(ctx.spec.promotion.rollback)
    elapsed = (ctx.t - seen.complete).total_seconds()
    rows = seen.watched_rows
    if fresh is not None:
        rows = rollout["watchedRows"] = rows + int(fresh["samples"])
        base = seen.baseline or RolloutBaseline()
        # The training data's class rates are the model's, not the rollout's: if none were known when
        # the rollout began (an operator restarted just before it had no window yet), use today's.
        reference = base.reference_class_rates or ctx.memory.reference_class_rates
        decision = rollout_verdict(base.model_dump(by_alias=True), fresh, reference, limits, elapsed)
        if decision.act and seen.from_version:
            return await roll_back(ctx, rollout, decision.reason)
        if decision.code == "HarmNotRolledBack":
            kopf.warn(ctx.body, reason="HarmDetected", message=decision.reason[:1000])
    if elapsed < limits.watch_seconds:
        if fresh is not None:
            update_rollout(ctx.patch, ctx.working, rollout, rollout)   # keep watchedRows across operator restarts
        return
    update_rollout(ctx.patch, ctx.working, rollout, None)
    if vouched(rows, limits):
        ctx.update_adapter(lastGood=seen.to)
        kopf.info(ctx.body, reason="RolloutHealthy",
                  message=f"adapter {seen.to} watched for {elapsed:.0f}s on {rows} live rows: no harm")
    else:
        # Time alone proves nothing: an idle model's watch saw no traffic. The version keeps
        # serving, but the rollback target stays the last version that live traffic vouched for.
        kopf.warn(ctx.body, reason="WatchInconclusive",
                  message=f"adapter {seen.to} served {rows} live rows in its {elapsed:.0f}s watch "
                          f"(rollback.minSamples is {limits.min_samples}): it keeps serving, but the last good "
                          f"version stays {ctx.adapter.last_good or BASE_VERSION}")


async def finish_rollout(ctx: ModelPass, seen: RolloutStatus, rollout: dict) -> None:
    """A rollout under way (`seen`, stored as `rollout`): roll back a version the pods refuse;
    complete it once every pod serves it (then its watch begins)."""
    adapter = ctx.adapter
    why = ctx.status.refused_adapters.get(seen.to)
    if why and seen.from_version and seen.from_version != seen.to:
        return await roll_back(ctx, rollout, f"pods refused {seen.to}: {why}", code="AdapterRefused")
    if (adapter.pods_at_desired or 0) >= ctx.spec.replicas and adapter.current == seen.to:
        rollout["complete"] = iso(ctx.t)
        ctx.memory.window = WindowState()  # from now on, windows hold only new-adapter traffic
        # back on the last good adapter: nothing to watch
        update_rollout(ctx.patch, ctx.working, rollout, rollout if seen.watch else None)


async def roll_back(ctx: ModelPass, rollout: dict, reason: str, code: str = "HarmDetected") -> None:
    target = ctx.adapter.last_good or rollout["from"]
    change_version(ctx.patch, target, "rollback", f"automatic rollback of {rollout['to']}: {reason}")
    update_rollout(ctx.patch, ctx.working, rollout, None)
    ctx.set_condition("RolledBack", True, code, f"{rollout['to']} -> {target}: {reason}")
    what = "harmed live signals" if code == "HarmDetected" else "could not be served"
    kopf.warn(ctx.body, reason="RolledBack", message=f"adapter {rollout['to']} {what} ({reason}); "
                                                     f"rolled back to {target}"[:1000])
    metrics.ROLLBACKS.labels(ctx.namespace, ctx.name, "automatic").inc()
    if rollout["to"] != BASE_VERSION:
        try:
            await asyncio.to_thread(registry_for(ctx).set_state, rollout["to"], "rolled-back", reason[:500])
        except RegistryError as err:
            log.warning("could not mark %s rolled back in the registry: %s", rollout["to"], err)


def change_version(patch, version: str, by: str, reason: str) -> None:
    """Write spec.adapter.version, with who and why in an annotation of the same PATCH (status
    is a separate subresource, patched separately, so it cannot carry this atomically)."""
    patch.spec["adapter"] = {"version": version}
    patch.metadata.annotations[CHANGE_ANNOTATION] = json.dumps({"version": version, "by": by,
                                                                "reason": reason[:300]})


def update_rollout(patch, status: dict, seen: dict, new: dict | None) -> None:
    """Change (or end, with None) the rollout this pass saw, recognised by its start and target.
    If the reconcile handler started another rollout meanwhile, that one is left alone: a patch
    function on the freshest body, not a merge patch of what this pass saw."""
    status["rollout"] = new
    patch.fns.append(functools.partial(_replace_rollout, (seen.get("started"), seen.get("to")), new))


def start_rollout(patch, status: dict, new: dict) -> None:
    """A new rollout replaces whatever rollout is stored, whole (a merge patch would keep keys of
    the old one's nested baseline that the new one leaves empty)."""
    status["rollout"] = new
    patch.fns.append(functools.partial(_replace_rollout, None, new))


def _replace_rollout(key: tuple | None, new: dict | None, body: dict) -> None:
    fresh = body.setdefault("status", {})
    current = fresh.get("rollout") or {}
    if key is not None and (current.get("started"), current.get("to")) != key:
        return
    if new is None:
        fresh.pop("rollout", None)
    else:   # a merge patch drops null keys; a JSON patch would store them
        fresh["rollout"] = without_nulls(new)
