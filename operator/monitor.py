"""The per-model loop: read the pods' drift, decide whether to heal, follow the healing Job, watch
a fresh rollout and roll it back if it harms.

One Kopf timer ticks every few seconds for every SelfHealingModel and does real work every
`spec.drift.checkIntervalSeconds`. Each step is a small function that reads the spec and status,
acts, and writes the status patch. All durable state lives in the CR's status, so an operator
restart resumes where it was and a Job already launched is found again by its deterministic name
(never launched twice). Only the drift window being filled lives in memory.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging

import aiohttp
import kopf

from model_handler.registry import RegistryError, next_version
from model_handler.rules import RuleSet
from shm_operator import decisions, k8s, metrics, policy, readiness
from shm_operator.children import heal_job, torchserve_model_name
from shm_operator.names import BASE_VERSION, CHANGE_ANNOTATION, COMPONENT_LABEL, MODEL_LABEL, RESOURCE
from shm_operator.crd import SelfHealingModelSpec
from shm_operator.rollout import candidate_problem, registry_for
from shm_operator.signals import (PodUnreachable, WindowState, class_rates, describe, drift_summary,
                                  fetch_pod_status, ingest)
from shm_operator.status import (full_spec, iso, now, parse_time, phase_of, refresh_phase, set_condition_in, update,
                                 update_adapter, update_rollout, without_nulls)

log = logging.getLogger(__name__)
TICK_SECONDS = 2.0
# While Ready is not True for the current generation the pods are checked this often (at most), so
# `kubectl wait --for=condition=Ready` returns within seconds of the pods serving.
NOT_READY_CHECK_SECONDS = 4.0
# status.drift.lastCheck alone is rewritten at most this often: a check that changes nothing else
# writes nothing (one status PATCH per model per check was most of the API load of idle models).
LAST_CHECK_REFRESH_SECONDS = 300.0


def prepared_spec(spec, meta, memo: kopf.Memo) -> tuple[dict, RuleSet] | None:
    """The defaulted spec and compiled rules, validated once per generation (the timer ticks every
    few seconds; re-parsing unchanged rules each time would be wasted work). None if invalid."""
    generation = meta.get("generation")
    if memo.get("prepared_generation") != generation:
        prepared = None
        if not decisions.validate_spec_semantics(spec):
            full = full_spec(spec)
            prepared = full, RuleSet.from_dicts(full["rules"], full["features"], full["classes"])
        memo["prepared"], memo["prepared_generation"] = prepared, generation
    return memo["prepared"]


# backoff: after a failed tick (e.g. the API server restarting) try again in seconds, not Kopf's 60.
@kopf.timer(*RESOURCE, interval=TICK_SECONDS, idle=None, backoff=5)
@metrics.count_errors
async def tick(name, namespace, spec, status, body, meta, memo: kopf.Memo, patch, **_) -> None:
    t = now()
    prepared = prepared_spec(spec, meta, memo)
    if prepared is None:
        return  # reported by the reconcile handler; nothing here may act on an invalid spec
    spec, rules = prepared
    last = memo.get("last_check")
    interval = spec["drift"]["checkIntervalSeconds"]
    if not readiness.ready_for(status or {}, meta.get("generation")):
        interval = min(interval, NOT_READY_CHECK_SECONDS)
    if last is not None and (t - last).total_seconds() < interval:
        return
    memo["last_check"] = t
    status = dict(status or {})
    if not (status.get("adapter") or {}).get("desired"):
        return  # not reconciled yet
    recorded_heal = dict(status.get("lastHeal") or {})   # as stored, before this pass changes it
    fresh = await observe_pods(name, namespace, spec, status, body, memo, rules, patch, t)
    await recheck_registry(name, namespace, spec, status, patch, t)
    await follow_heal(name, namespace, spec, status, body, patch, t)
    await expire_heal_job(name, namespace, spec, recorded_heal, memo)
    await maybe_heal(name, namespace, spec, status, body, patch, t)
    await watch_rollout(name, namespace, spec, status, body, memo, patch, fresh, t)
    if patch or phase_of(status) != status.get("phase"):
        refresh_phase(patch, status)


async def observe_pods(name, namespace, spec, status, body, memo, rules, patch, t) -> dict | None:
    """Poll every ready pod; update status.adapter and, when a window fills, status.drift.
    Returns the drift summary of a window completed now, if any."""
    all_pods = await k8s.list_pods(namespace, {MODEL_LABEL: name, COMPONENT_LABEL: "serving"})
    pods = [p for p in all_pods if k8s.pod_ready(p)]
    state: WindowState = memo.setdefault("window", WindowState())
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(fetch_pod_status(session, p, torchserve_model_name(name, spec))
                                         for p in pods), return_exceptions=True)
    served, unreachable, serving = [], [], {}
    for pod, result in zip(pods, results):
        try:
            if isinstance(result, BaseException):
                raise result
            ingest(state, pod["metadata"]["uid"], result)
            served.append(result["adapter"])
            serving[pod["metadata"]["name"]] = result["adapter"].get("version")
        except (PodUnreachable, ValueError, KeyError) as err:
            unreachable.append(f"{pod['metadata']['name']}: {err}"[:300])
    state.forget_missing({p["metadata"]["uid"] for p in pods})
    stored = status.get("adapter") or {}
    versions = {a.get("version") for a in served}
    at_desired = sum(1 for a in served if a.get("version") == stored.get("desired"))
    seen = {"podsAtDesired": at_desired, "podsTotal": spec["replicas"], "ready": f"{at_desired}/{spec['replicas']}",
            "current": next(iter(versions)) if len(versions) == 1 else None}
    refused = {v: why[:300] for a in served for v, why in (a.get("refused") or {}).items()}
    changed = not same({**stored, **seen}, stored) or not same(refused, status.get("refusedAdapters"))
    if changed:   # only the keys the pods tell: `desired` belongs to the reconcile handler
        update_adapter(patch, status, **seen)
        update(patch, status, refusedAdapters=refused)
    report_pod_health(name, namespace, spec, status, body, patch, unreachable, refused, t)
    readiness.report_readiness(body, patch, status, spec, all_pods, k8s.pod_ready, serving, t)

    before = dict(status.get("drift") or {})
    drift = {**before, "unreachablePods": unreachable}
    rows = state.pending.n if state.pending is not None else 0
    if rows > memo.get("window_rows", 0):
        memo["traffic_at"] = t   # a window is filling: a rollout may wait for it (rollout.baseline_wait)
    window = state.take_window(spec["drift"]["windowRows"])
    memo["window_rows"] = 0 if window is not None else rows
    summary = None
    if window is not None:
        scores = policy.score(window, state.reference, rules, spec["drift"])
        judged = policy.judge_window(scores, spec["drift"], drift.get("trigger"), drift.get("since"), iso(t))
        trigger, was, drifting = judged.trigger, judged.was, judged.drifting
        summary = {**drift_summary(scores, trigger, judged.since, class_rates(window)),
                   "adapter": window_adapter(status, seen)}
        memo["reference_class_rates"] = class_rates(state.reference.counts)
        drift.update(summary)
        if judged.onset:
            drift["onset"] = judged.onset  # this window already saw the drift: every row after it is drifted
        metrics.observe_drift(namespace, name, summary)
        report_drift(body, patch, status, scores, trigger, was, t)
    last_check = parse_time(before.get("lastCheck"))
    changed = changed or not same({**drift, "lastCheck": None}, {**before, "lastCheck": None})
    if changed or last_check is None or (t - last_check).total_seconds() >= LAST_CHECK_REFRESH_SECONDS:
        update(patch, status, drift={**drift, "lastCheck": iso(t)})
    return summary


def report_drift(body, patch, status, scores, trigger, was: bool, t) -> None:
    """DriftDetected names the signals on (InputShift, LabelShift, RuleConflict, SeveralSignals) and
    why the others are silent; an Event when drift is declared and when it clears. While drifting,
    the condition follows a change of the signals on, without an Event."""
    message = describe(scores, trigger)
    if trigger.drifting and trigger.signals:
        reason = decisions.drift_reason(trigger.signals)
        if not was:
            set_condition_in(patch, status, "DriftDetected", True, reason, message, t)
            kopf.info(body, reason="DriftDetected", message=message[:1000])
        elif reason != next((c.get("reason") for c in status.get("conditions") or []
                             if c.get("type") == "DriftDetected"), None):
            set_condition_in(patch, status, "DriftDetected", True, reason, message, t)
    elif was and not trigger.drifting:
        set_condition_in(patch, status, "DriftDetected", False, "Cleared", f"every signal is below its off "
                                                                           f"threshold: {message}", t)
        kopf.info(body, reason="DriftCleared", message=message[:1000])


def window_adapter(status: dict, seen: dict) -> str | None:
    """The one adapter that served every row of a window completed now, or None for a mixed one.
    Windows restart when a rollout completes (watch_rollout), so with no rollout under way every
    row came from the version all pods serve. A rollout's harm watch compares with such a window."""
    rollout = status.get("rollout") or {}
    current = seen.get("current")
    if (rollout and not rollout.get("complete")) or current != (status.get("adapter") or {}).get("desired"):
        return None
    return current


def same(new, stored) -> bool:
    """Whether writing `new` as a merge patch would leave `stored` as it is (a null or absent field
    is not stored, an empty mapping is as good as none)."""
    return without_nulls(new or {}) == without_nulls(stored or {})


POD_PROBLEMS = ("PodsUnreachable", "AdapterRefused")


def degraded_reason(status: dict) -> str | None:
    return next((c.get("reason") for c in status.get("conditions") or []
                 if c.get("type") == "Degraded" and c.get("status") == "True"), None)


def report_pod_health(name, namespace, spec, status, body, patch, unreachable, refused, t) -> None:
    """Pods that do not answer, or that refuse the desired adapter, make the model Degraded (one
    Event when it starts, one when it ends). Degraded reasons that need a person (a version not in
    the registry, a corrupt adapter) are left for the spec change that resolves them."""
    desired = (status.get("adapter") or {}).get("desired")
    problem = None
    if unreachable:
        problem = ("PodsUnreachable", f"{len(unreachable)} of {spec['replicas']} pods do not answer the drift "
                                      f"status (they may still serve): {'; '.join(unreachable)[:600]}")
    elif desired in refused:
        problem = ("AdapterRefused", f"pods refused adapter {desired} and keep serving their previous one: "
                                     f"{refused[desired]}")
    current = degraded_reason(status)
    if problem is not None and current in (None, *POD_PROBLEMS):
        if current != problem[0]:
            kopf.warn(body, reason=problem[0], message=problem[1][:1000])
        set_condition_in(patch, status, "Degraded", True, problem[0], problem[1][:1000], t)
    elif problem is None and current in POD_PROBLEMS:
        set_condition_in(patch, status, "Degraded", False, "PodsHealthy", "every ready pod answers and serves "
                                                                          f"{desired}", t)
        kopf.info(body, reason="PodsHealthy", message=f"every ready pod answers again and serves {desired}")


async def expire_heal_job(name, namespace, spec, recorded_heal: dict, memo) -> None:
    """Give the last heal Job its ttlSecondsAfterFinished once its result is stored in
    status.lastHeal (read from the stored status, not this pass's working copy): the Job and its
    pod, whose termination message is the result, are deleted only after the operator no longer
    needs them. Nothing reads a finished heal's Job again; the next heal takes the next name."""
    job_name = recorded_heal.get("job")
    if not job_name or recorded_heal.get("result") in (None, "Running") or memo.get("expiring_job") == job_name:
        return
    ttl = spec["healing"]["ttlSecondsAfterFinished"]
    job = await k8s.read("Job", namespace, job_name)
    job_labels = ((job or {}).get("metadata") or {}).get("labels") or {}
    if job is not None and (job_labels.get(MODEL_LABEL), job_labels.get(COMPONENT_LABEL)) == (name, "heal") \
            and (job.get("spec") or {}).get("ttlSecondsAfterFinished") != ttl:
        await k8s.patch("Job", namespace, job_name, {"spec": {"ttlSecondsAfterFinished": ttl}})
    memo["expiring_job"] = job_name


async def recheck_registry(name, namespace, spec, status, patch, t) -> None:
    """RegistryUnreachable ends when the registry answers again (checked once per drift check)."""
    if degraded_reason(status) != "RegistryUnreachable":
        return
    try:
        await asyncio.to_thread(registry_for(name, namespace, spec).versions)
    except RegistryError:
        return
    set_condition_in(patch, status, "Degraded", False, "RegistryReachable", "the registry answers again", t)


def registry_unreachable(body, patch, status, what: str, err: RegistryError, t) -> None:
    """Degraded/RegistryUnreachable, with one Event per outage, not one per check
    (`recheck_registry` ends it)."""
    if degraded_reason(status) != "RegistryUnreachable":
        kopf.warn(body, reason="RegistryUnreachable", message=f"{what}: {str(err)[:500]}")
    set_condition_in(patch, status, "Degraded", True, "RegistryUnreachable", str(err)[:1000], t)


async def maybe_heal(name, namespace, spec, status, body, patch, t) -> None:
    """Both signals + persistence (the trigger), cooldown, daily budget, mode, nothing under way."""
    last = status.get("lastHeal") or {}
    recent = [decisions.format_time(s) for s in decisions.recent_heals(status.get("recentHealStarts") or [], t)]
    decision = decisions.should_heal(
        now=t, drifting=bool(((status.get("drift") or {}).get("trigger") or {}).get("drifting")),
        mode=spec["healing"]["mode"], healing_job=last.get("job") if last.get("result") == "Running" else None,
        phase=status.get("phase") if status.get("rollout") else None,
        candidate=(status.get("candidate") or {}).get("version"), last_heal_finished=last.get("finished"),
        cooldown_seconds=spec["healing"]["cooldownSeconds"], recent_heal_starts=recent,
        max_heals_per_day=spec["healing"]["maxHealsPerDay"])
    if not decision.act:
        return
    count = (status.get("healCount") or 0) + 1
    job_name = decisions.heal_job_name(name, count)
    # A Job of this name exists if an earlier pass created it and stopped before its status write
    # landed (an operator restart): adopt it, and the version it makes, never launch or name another.
    job = await k8s.read("Job", namespace, job_name)
    if job is None:
        try:
            versions = await asyncio.to_thread(registry_for(name, namespace, spec).versions)
        except RegistryError as err:
            return registry_unreachable(body, patch, status, "cannot start a heal", err, t)
        parent = (status.get("adapter") or {}).get("lastGood") or BASE_VERSION
        config = SelfHealingModelSpec.model_validate(spec).heal_job_config()
        job = heal_job(name, namespace, spec, job_name, parent, next_version(versions), config,
                       since=(status.get("drift") or {}).get("onset"))
        kopf.adopt(job, owner=body)
        job = await k8s.create_or_read(job, namespace)
    target = decisions.heal_job_target(job)
    if target is None or ((job.get("metadata") or {}).get("labels") or {}).get(MODEL_LABEL) != name:
        # not a heal Job of this model (something else took the name): skip the name
        update(patch, status, healCount=count)
        kopf.warn(body, reason="HealJobNameTaken", message=f"Job {job_name} exists but is no heal Job of this "
                                                           "model; the next heal takes the next name")
        return
    parent, version = target
    update(patch, status, healCount=count, recentHealStarts=[*recent, iso(t)], healsToday=len(recent) + 1,
           lastHeal={"job": job_name, "version": version, "parent": parent, "started": iso(t), "finished": None,
                     "result": "Running", "reason": decision.reason, "steps": [], "failedChecks": [],
                     "verdict": None, "evidence": [], "estimate": None})
    set_condition_in(patch, status, "Healing", True, "JobStarted", f"Job {job_name} heals {parent} -> {version}", t)
    kopf.info(body, reason="HealStarted", message=f"{decision.reason}; Job {job_name} heals {parent} -> {version} "
                                                  f"(drifting features: {(status.get('drift') or {}).get('topFeatures')})")
    metrics.HEALS_STARTED.labels(namespace, name).inc()


async def follow_heal(name, namespace, spec, status, body, patch, t) -> None:
    """A running heal Job finished: promote its candidate, wait for a person, or record why not."""
    last = dict(status.get("lastHeal") or {})
    if last.get("result") != "Running":
        return
    job = await k8s.read("Job", namespace, last["job"])
    if job is None:
        last.update(result="Failed", finished=iso(t), reason="the healing Job disappeared")
        return finish_heal(name, namespace, body, patch, status, last, t)
    done = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
            if c.get("status") == "True" and c.get("type") in ("Complete", "Failed")}
    if not done:
        return
    pods = await k8s.list_pods(namespace, {"job-name": last["job"]})
    result = decisions.parse_job_result(next((m for m in map(k8s.termination_message, pods) if m), ""))
    init_failed = next((m for m in map(k8s.init_failure, pods) if m), "")
    if result.error and init_failed:   # the model never reached the Job: say why, not "no result"
        result = dataclasses.replace(result, error=init_failed)
    last.update(finished=iso(t), steps=list(result.steps), failedChecks=list(result.failed_checks),
                verdict=result.verdict, evidence=[e[:300] for e in result.evidence[:20]],
                estimate=dict(result.estimate) if result.estimate else None,
                classRates=dict(result.class_rates) or None)
    if "Failed" in done or result.error:
        failed = done.get("Failed") or {}
        # The Job's own reason first (DeadlineExceeded, BackoffLimitExceeded), then what the pod said.
        why = "; ".join(filter(None, [f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".rstrip(": ")
                                      if failed else "", result.error]))
        last.update(result="Failed", reason=why[:1000])
        return finish_heal(name, namespace, body, patch, status, last, t)
    action = decisions.promotion_action(spec["healing"]["mode"], result)
    if action.action in ("promote", "await-approval"):
        registry = registry_for(name, namespace, spec)
        try:
            problem = await asyncio.to_thread(candidate_problem, registry, result.version, result.sha256)
        except RegistryError as err:   # the result stays in the Job; read it again next check
            return registry_unreachable(body, patch, status, f"cannot check candidate {result.version}", err, t)
        if problem is not None:
            last.update(result="Failed", reason=problem[:1000])
            with contextlib.suppress(RegistryError):   # best effort: the Job's own meta may be what broke
                await asyncio.to_thread(registry.set_state, result.version, "rejected", problem[:500])
            return finish_heal(name, namespace, body, patch, status, last, t)
    last["reason"] = action.reason[:1000]
    last["result"] = policy.heal_outcome(action, result)
    if action.action == "promote":
        change_version(patch, result.version, "operator", f"healed by {last['job']}: {result.reason}")
        kopf.info(body, reason="Promoting", message=f"{result.version} passed the gate; rolling out")
    elif action.action == "await-approval":
        needs_approval = result.verdict == "approve"   # whatever the mode: no independent evidence
        update(patch, status, candidate={"version": result.version, "job": last["job"], "created": iso(t),
                                         "reason": (action.reason if needs_approval else result.reason)[:500]})
        command = decisions.approve_command(name, namespace, result.version)
        kopf.info(body, reason="NeedsApproval" if needs_approval else "CandidateReady",
                  message=f"{action.reason[:800]}: {command}")
    elif action.action == "nothing":
        kopf.info(body, reason="NothingToFix", message=action.reason[:1000])
    else:
        kopf.info(body, reason="CandidateRejected" if last["result"] == "Rejected" else "NothingToFix",
                  message=action.reason[:1000])
    finish_heal(name, namespace, body, patch, status, last, t)


def finish_heal(name, namespace, body, patch, status, last, t) -> None:
    update(patch, status, lastHeal=last)
    estimated = decisions.performance(last, t)
    if estimated is not None:
        update(patch, status, performance=estimated)
        metrics.observe_performance(namespace, name, estimated["accuracy"])
    set_condition_in(patch, status, "Healing", False, last["result"], last.get("reason") or "", t)
    if last["result"] == "Failed":
        kopf.warn(body, reason="HealFailed", message=f"Job {last['job']}: {last.get('reason')}"[:1000])
    metrics.HEALS_FINISHED.labels(namespace, name, last["result"]).inc()


async def watch_rollout(name, namespace, spec, status, body, memo, patch, fresh, t) -> None:
    """Once every pod serves the new adapter, compare live windows with the pre-rollout baseline
    for watchSeconds; roll back on harm, else make it the last good adapter, if live traffic
    (at least rollback.minSamples rows) vouched for it."""
    rollout = dict(status.get("rollout") or {})
    adapter = status.get("adapter") or {}
    if not rollout:
        return
    if not rollout.get("complete"):
        why = (status.get("refusedAdapters") or {}).get(rollout["to"])
        if why and rollout.get("from") and rollout["from"] != rollout["to"]:
            return await roll_back(name, namespace, spec, status, body, patch, rollout,
                                   f"pods refused {rollout['to']}: {why}", t, code="AdapterRefused")
        if adapter.get("podsAtDesired", 0) >= spec["replicas"] and adapter.get("current") == rollout["to"]:
            rollout["complete"] = iso(t)
            memo["window"] = WindowState()  # from now on, windows hold only new-adapter traffic
            # back on the last good adapter: nothing to watch
            update_rollout(patch, status, rollout, rollout if rollout.get("watch", True) else None)
        return
    limits = decisions.RollbackLimits.from_spec(SelfHealingModelSpec.model_validate(spec).promotion.rollback)
    elapsed = (t - parse_time(rollout["complete"])).total_seconds()
    base = rollout.get("baseline") or {}
    if fresh is not None:
        rollout["watchedRows"] = int(rollout.get("watchedRows") or 0) + int(fresh["samples"])
        # The training data's class rates are the model's, not the rollout's: if none were known when
        # the rollout began (an operator restarted just before it had no window yet), use today's.
        reference = base.get("referenceClassRates") or memo.get("reference_class_rates") or {}
        decision = policy.rollout_verdict(base, fresh, reference, limits, elapsed)
        if decision.act and rollout.get("from"):
            return await roll_back(name, namespace, spec, status, body, patch, rollout, decision.reason, t)
        if decision.code == "HarmNotRolledBack":
            kopf.warn(body, reason="HarmDetected", message=decision.reason[:1000])
    if elapsed < limits.watch_seconds:
        if fresh is not None:
            update_rollout(patch, status, rollout, rollout)   # keep watchedRows across operator restarts
        return
    update_rollout(patch, status, rollout, None)
    rows = int(rollout.get("watchedRows") or 0)
    if policy.vouched(rows, limits):
        update_adapter(patch, status, lastGood=rollout["to"])
        kopf.info(body, reason="RolloutHealthy",
                  message=f"adapter {rollout['to']} watched for {elapsed:.0f}s on {rows} live rows: no harm")
    else:
        # Time alone proves nothing: an idle model's watch saw no traffic. The version keeps
        # serving, but the rollback target stays the last version that live traffic vouched for.
        kopf.warn(body, reason="WatchInconclusive",
                  message=f"adapter {rollout['to']} served {rows} live rows in its {elapsed:.0f}s watch "
                          f"(rollback.minSamples is {limits.min_samples}): it keeps serving, but the last good "
                          f"version stays {(status.get('adapter') or {}).get('lastGood') or 'base'}")


def change_version(patch, version: str, by: str, reason: str) -> None:
    """Write spec.adapter.version, with who and why in an annotation of the same PATCH (status
    is a separate subresource, patched separately, so it cannot carry this atomically)."""
    patch.spec["adapter"] = {"version": version}
    patch.metadata.annotations[CHANGE_ANNOTATION] = json.dumps({"version": version, "by": by,
                                                                "reason": reason[:300]})


async def roll_back(name, namespace, spec, status, body, patch, rollout, reason, t, code="HarmDetected") -> None:
    target = (status.get("adapter") or {}).get("lastGood") or rollout["from"]
    change_version(patch, target, "rollback", f"automatic rollback of {rollout['to']}: {reason}")
    update_rollout(patch, status, rollout, None)
    set_condition_in(patch, status, "RolledBack", True, code, f"{rollout['to']} -> {target}: {reason}", t)
    what = "harmed live signals" if code == "HarmDetected" else "could not be served"
    kopf.warn(body, reason="RolledBack", message=f"adapter {rollout['to']} {what} ({reason}); "
                                                 f"rolled back to {target}"[:1000])
    metrics.ROLLBACKS.labels(namespace, name, "automatic").inc()
    if rollout["to"] != BASE_VERSION:
        try:
            await asyncio.to_thread(registry_for(name, namespace, spec).set_state, rollout["to"], "rolled-back",
                                    reason[:500])
        except RegistryError as err:
            log.warning("could not mark %s rolled back in the registry: %s", rollout["to"], err)
