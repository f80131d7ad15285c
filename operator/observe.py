"""Observing the serving pods: which pods serve, what they report, and what that says about drift.

Kopf keeps an index of the serving pods (`serving_pods`, fed by a watch), so a drift check reads
them from memory and costs no API call; it then asks each ready pod for its drift status, updates
status.adapter (what the pods serve), status.refusedAdapters, status.drift, the Ready,
DriftDetected and Degraded (PodsUnreachable, AdapterRefused) conditions, and the Events about them.
The drift window being filled lives in the model's memory (`memory.ModelMemory`), lost on restart.
"""
from __future__ import annotations

import asyncio
import copy

import aiohttp
import kopf

from shm_operator import decisions, k8s, metrics, policy, readiness
from shm_operator.context import ModelPass
from shm_operator.crd import SelfHealingModelStatus
from shm_operator.children import torchserve_model_name
from shm_operator.names import COMPONENT_LABEL, MODEL_LABEL
from shm_operator.signals import (PodUnreachable, class_rates, describe, drift_summary,
                                  fetch_pod_status, ingest)
from shm_operator.status import degraded_reason, iso, without_nulls

# status.drift.lastCheck alone is rewritten at most this often: a check that changes nothing else
# writes nothing (one status PATCH per model per check was most of the API load of idle models).
LAST_CHECK_REFRESH_SECONDS = 300.0


@kopf.index("v1", "pods", labels={COMPONENT_LABEL: "serving", MODEL_LABEL: kopf.PRESENT})
def serving_pods(namespace, labels, body, **_) -> dict:
    """Every serving pod by (namespace, model), kept current by one watch of pods: a drift check
    reads them here instead of listing pods (one request per model per check)."""
    return {(namespace, labels[MODEL_LABEL]): copy.deepcopy(dict(body))}


async def observe_pods(ctx: ModelPass, *, pods: list[dict]) -> dict | None:
    """Poll every ready pod of `pods` (the model's serving pods); update status.adapter and, when a
    window fills, status.drift. Returns the drift summary of a window completed now, if any."""
    ready = [p for p in pods if k8s.pod_ready(p)]
    state = ctx.memory.window
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(fetch_pod_status(session, p, torchserve_model_name(ctx.name, ctx.spec_json))
                                         for p in ready), return_exceptions=True)
    served, unreachable, serving = [], [], {}
    for pod, result in zip(ready, results):
        try:
            if isinstance(result, BaseException):
                raise result
            ingest(state, pod["metadata"]["uid"], result)
            served.append(result["adapter"])
            serving[pod["metadata"]["name"]] = result["adapter"].get("version")
        except (PodUnreachable, ValueError, KeyError) as err:
            unreachable.append(f"{pod['metadata']['name']}: {err}"[:300])
    state.forget_missing({p["metadata"]["uid"] for p in ready})
    seen, changed = report_served(ctx, served, unreachable)
    readiness.report_readiness(ctx, pods=pods, ready=k8s.pod_ready, serving=serving)
    return check_drift(ctx, seen, unreachable, changed=changed)


def report_served(ctx: ModelPass, served: list[dict], unreachable: list[str]) -> tuple[dict, bool]:
    """status.adapter (what the pods serve) and status.refusedAdapters, and the pods' health;
    returns the adapter keys the pods tell, and whether they changed the status."""
    stored, replicas = ctx.working.get("adapter") or {}, ctx.spec.replicas
    versions = {a.get("version") for a in served}
    at_desired = sum(1 for a in served if a.get("version") == ctx.adapter.desired)
    seen = {"podsAtDesired": at_desired, "podsTotal": replicas, "ready": f"{at_desired}/{replicas}",
            "current": next(iter(versions)) if len(versions) == 1 else None}
    refused = {v: why[:300] for a in served for v, why in (a.get("refused") or {}).items()}
    changed = not same({**stored, **seen}, stored) or not same(refused, ctx.status.refused_adapters)
    if changed:   # only the keys the pods tell: `desired` belongs to the reconcile handler
        ctx.update_adapter(**seen)
        ctx.update(refusedAdapters=refused)
    report_pod_health(ctx, unreachable, refused)
    return seen, changed


def check_drift(ctx: ModelPass, seen: dict, unreachable: list[str], *, changed: bool) -> dict | None:
    """Score a window completed now (status.drift, DriftDetected); rewrite status.drift when it
    changed, or its lastCheck at least every LAST_CHECK_REFRESH_SECONDS."""
    remembered, state, t = ctx.memory, ctx.memory.window, ctx.t
    before = dict(ctx.working.get("drift") or {})   # the stored form, rewritten whole below
    drift = {**before, "unreachablePods": unreachable}
    rows = state.pending.n if state.pending is not None else 0
    if rows > remembered.window_rows:
        remembered.traffic_at = t   # a window is filling: a rollout may wait for it (rollout.baseline_wait)
    window = state.take_window(ctx.spec.drift.window_rows)
    remembered.window_rows = 0 if window is not None else rows
    summary = None
    if window is not None:
        scores = policy.score(window, state.reference, ctx.rules, ctx.spec.drift)
        judged = policy.judge_window(scores, ctx.spec.drift, drift.get("trigger"), drift.get("since"), iso(t))
        trigger, was = judged.trigger, judged.was
        summary = {**drift_summary(scores, trigger, judged.since, class_rates(window)),
                   "adapter": window_adapter(ctx.status, seen)}
        remembered.reference_class_rates = class_rates(state.reference.counts)
        drift.update(summary)
        if judged.onset:
            drift["onset"] = judged.onset  # this window already saw the drift: every row after it is drifted
        metrics.observe_drift(ctx.namespace, ctx.name, summary)
        report_drift(ctx, scores, trigger, was)
    last_check = ctx.drift.last_check
    changed = changed or not same({**drift, "lastCheck": None}, {**before, "lastCheck": None})
    if changed or last_check is None or (t - last_check).total_seconds() >= LAST_CHECK_REFRESH_SECONDS:
        ctx.update(drift={**drift, "lastCheck": iso(t)})
    return summary


def report_drift(ctx: ModelPass, scores, trigger, was: bool) -> None:
    """DriftDetected names the signals on (InputShift, LabelShift, RuleConflict, SeveralSignals) and
    why the others are silent; an Event when drift is declared and when it clears. While drifting,
    the condition follows a change of the signals on, without an Event."""
    message = describe(scores, trigger)
    if trigger.drifting and trigger.signals:
        reason = decisions.drift_reason(trigger.signals)
        if not was:
            ctx.set_condition("DriftDetected", True, reason, message)
            kopf.info(ctx.body, reason="DriftDetected", message=message[:1000])
        elif reason != next((c.reason for c in ctx.status.conditions if c.type == "DriftDetected"), None):
            ctx.set_condition("DriftDetected", True, reason, message)
    elif was and not trigger.drifting:
        ctx.set_condition("DriftDetected", False, "Cleared", f"every signal is below its off threshold: {message}")
        kopf.info(ctx.body, reason="DriftCleared", message=message[:1000])


def window_adapter(status: SelfHealingModelStatus, seen: dict) -> str | None:
    """The one adapter that served every row of a window completed now, or None for a mixed one.
    Windows restart when a rollout completes (watch_rollout), so with no rollout under way every
    row came from the version all pods serve. A rollout's harm watch compares with such a window."""
    rollout, desired = status.rollout, status.adapter.desired if status.adapter else None
    current = seen.get("current")
    if (rollout is not None and not rollout.complete) or current != desired:
        return None
    return current


def same(new, stored) -> bool:
    """Whether writing `new` as a merge patch would leave `stored` as it is (a null or absent field
    is not stored, an empty mapping is as good as none)."""
    return without_nulls(new or {}) == without_nulls(stored or {})


POD_PROBLEMS = ("PodsUnreachable", "AdapterRefused")


def report_pod_health(ctx: ModelPass, unreachable: list[str], refused: dict[str, str]) -> None:
    """Pods that do not answer, or that refuse the desired adapter, make the model Degraded (one
    Event when it starts, one when it ends). Degraded reasons that need a person (a version not in
    the registry, a corrupt adapter) are left for the spec change that resolves them."""
    desired = ctx.adapter.desired
    problem = None
    if unreachable:
        problem = ("PodsUnreachable", f"{len(unreachable)} of {ctx.spec.replicas} pods do not answer the drift "
                                      f"status (they may still serve): {'; '.join(unreachable)[:600]}")
    elif desired in refused:
        problem = ("AdapterRefused", f"pods refused adapter {desired} and keep serving their previous one: "
                                     f"{refused[desired]}")
    current = degraded_reason(ctx.working)
    if problem is not None and current in (None, *POD_PROBLEMS):
        if current != problem[0]:
            kopf.warn(ctx.body, reason=problem[0], message=problem[1][:1000])
        ctx.set_condition("Degraded", True, problem[0], problem[1][:1000])
    elif problem is None and current in POD_PROBLEMS:
        ctx.set_condition("Degraded", False, "PodsHealthy", f"every ready pod answers and serves {desired}")
        kopf.info(ctx.body, reason="PodsHealthy", message=f"every ready pod answers again and serves {desired}")
