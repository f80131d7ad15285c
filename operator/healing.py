"""Healing: start a heal Job when drift is declared, follow it, and finish with its verdict.

`maybe_heal` starts one (drift declared, cooldown and daily budget respected, nothing else under
way) under a deterministic name, so an operator restarted mid-way adopts the Job it launched and
never launches another; `follow_heal` reads a finished Job's result and promotes its candidate
(through `rollout.change_version`), offers it for approval, or records why not; `finish_heal`
writes status.lastHeal, status.performance and the Healing condition; `expire_heal_job` lets
Kubernetes delete the Job once its result is stored. The registry's health (Degraded,
RegistryUnreachable) is followed here too, because healing is what needs the registry each check.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import kopf

from model_handler.registry import RegistryError, next_version
from shm_operator import decisions, k8s, metrics, policy
from shm_operator.children import heal_config_map, heal_job
from shm_operator.context import ModelPass
from shm_operator.crd import LastHeal
from shm_operator.job_result import parse_job_result
from shm_operator.names import BASE_VERSION, COMPONENT_LABEL, MODEL_LABEL
from shm_operator.rollout import adapter_expected, candidate_problem, change_version, registry_for
from shm_operator.status import degraded_reason, iso


async def maybe_heal(ctx: ModelPass) -> None:
    """Both signals + persistence (the trigger), cooldown, daily budget, mode, nothing under way."""
    status, healing, t = ctx.status, ctx.spec.healing, ctx.t
    last, drift = ctx.last_heal, ctx.drift
    recent = [decisions.format_time(s) for s in decisions.recent_heals(status.recent_heal_starts, t)]
    decision = decisions.should_heal(
        now=t, drifting=bool(drift.trigger and drift.trigger.drifting), mode=healing.mode,
        healing_job=last.job if last.result == "Running" else None,
        phase=status.phase if status.rollout else None,
        candidate=status.candidate.version if status.candidate else None, last_heal_finished=last.finished,
        cooldown_seconds=healing.cooldown_seconds, recent_heal_starts=recent,
        max_heals_per_day=healing.max_heals_per_day)
    if not decision.act:
        return
    count = (status.heal_count or 0) + 1
    job_name = decisions.heal_job_name(ctx.name, count)
    # A Job of this name exists if an earlier pass created it and stopped before its status write
    # landed (an operator restart): adopt it, and the version it makes, never launch or name another.
    job = await k8s.read("Job", ctx.namespace, job_name)
    config = ctx.spec.heal_job_config()
    if job is None:
        try:
            versions = await asyncio.to_thread(registry_for(ctx).versions)
        except RegistryError as err:
            return registry_unreachable(ctx, "cannot start a heal", err)
        parent = ctx.adapter.last_good or BASE_VERSION
        job = heal_job(ctx.name, ctx.namespace, ctx.spec_json, job_name=job_name, parent=parent,
                       version=next_version(versions), config=config, since=iso(drift.onset) if drift.onset else None)
        kopf.adopt(job, owner=ctx.body)
        job = await k8s.create_or_read(job, ctx.namespace)
    target = decisions.heal_job_target(job)
    if target is None or ((job.get("metadata") or {}).get("labels") or {}).get(MODEL_LABEL) != ctx.name:
        # not a heal Job of this model (something else took the name): skip the name
        ctx.update(healCount=count)
        kopf.warn(ctx.body, reason="HealJobNameTaken", message=f"Job {job_name} exists but is no heal Job of this "
                                                               "model; the next heal takes the next name")
        return
    # Its config file, owned by the Job (deleted with it): its pod waits for this volume
    await k8s.create(heal_config_map(job, config), ctx.namespace)
    parent, version = target
    ctx.update(healCount=count, recentHealStarts=[*recent, iso(t)], healsToday=len(recent) + 1,
               lastHeal={"job": job_name, "version": version, "parent": parent, "started": iso(t), "finished": None,
                         "result": "Running", "reason": decision.reason, "steps": [], "failedChecks": [],
                         "verdict": None, "evidence": [], "estimate": None})
    ctx.set_condition("Healing", True, "JobStarted", f"Job {job_name} heals {parent} -> {version}")
    kopf.info(ctx.body, reason="HealStarted", message=f"{decision.reason}; Job {job_name} heals {parent} -> "
                                                      f"{version} (drifting features: {drift.top_features})")
    metrics.HEALS_STARTED.labels(ctx.namespace, ctx.name).inc()


async def follow_heal(ctx: ModelPass) -> None:
    """A running heal Job finished: promote its candidate, wait for a person, or record why not."""
    if ctx.last_heal.result != "Running":
        return
    # the stored form, copied to be rewritten whole by finish_heal
    last = dict(ctx.working["lastHeal"])
    job = await k8s.read("Job", ctx.namespace, last["job"])
    if job is None:
        last.update(result="Failed", finished=iso(ctx.t), reason="the healing Job disappeared")
        return finish_heal(ctx, last)
    done = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
            if c.get("status") == "True" and c.get("type") in ("Complete", "Failed")}
    if not done:
        return
    pods = await k8s.list_pods(ctx.namespace, {"job-name": last["job"]})
    result = parse_job_result(next((m for m in map(k8s.termination_message, pods) if m), ""))
    init_failed = next((m for m in map(k8s.init_failure, pods) if m), "")
    if result.error and init_failed:   # the model never reached the Job: say why, not "no result"
        result = dataclasses.replace(result, error=init_failed)
    last.update(finished=iso(ctx.t), steps=list(result.steps), failedChecks=list(result.failed_checks),
                verdict=result.verdict, evidence=[e[:300] for e in result.evidence[:20]],
                estimate=dict(result.estimate) if result.estimate else None,
                classRates=dict(result.class_rates) or None)
    if "Failed" in done or result.error:
        failed = done.get("Failed") or {}
        # The Job's own reason first (DeadlineExceeded, BackoffLimitExceeded), then what the pod said.
        why = "; ".join(filter(None, [f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".rstrip(": ")
                                      if failed else "", result.error]))
        last.update(result="Failed", reason=why[:1000])
        return finish_heal(ctx, last)
    action = decisions.promotion_action(ctx.spec.healing.mode, result)
    if action.action in ("promote", "await-approval"):
        problem = await candidate_problem_of(ctx, result)
        if problem is RETRY:
            return
        if problem is not None:
            last.update(result="Failed", reason=problem[:1000])
            return finish_heal(ctx, last)
    last["reason"] = action.reason[:1000]
    last["result"] = policy.heal_outcome(action, result)
    announce(ctx, action, result, last)
    finish_heal(ctx, last)


RETRY = "retry"   # candidate_problem_of: the registry did not answer; read the result again next check


async def candidate_problem_of(ctx: ModelPass, result) -> str | None:
    """Why the Job's candidate cannot be promoted or offered (and marked rejected in the registry),
    None if it can, RETRY if the registry did not answer (the result stays in the Job)."""
    registry = registry_for(ctx)
    try:
        problem = await asyncio.to_thread(candidate_problem, registry, result.version, result.sha256,
                                          *adapter_expected(ctx.memory))
    except RegistryError as err:
        registry_unreachable(ctx, f"cannot check candidate {result.version}", err)
        return RETRY
    if problem is not None:
        with contextlib.suppress(RegistryError):   # best effort: the Job's own meta may be what broke
            await asyncio.to_thread(registry.set_state, result.version, "rejected", problem[:500])
    return problem


def announce(ctx: ModelPass, action, result, last: dict) -> None:
    """Act on a finished heal's promotion action: promote, offer the candidate, or say why not."""
    job = last["job"]
    if action.action == "promote":
        change_version(ctx.patch, result.version, "operator", f"healed by {job}: {result.reason}")
        kopf.info(ctx.body, reason="Promoting", message=f"{result.version} passed the gate; rolling out")
    elif action.action == "await-approval":
        needs_approval = result.verdict == "approve"   # whatever the mode: no independent evidence
        ctx.update(candidate={"version": result.version, "job": job, "created": iso(ctx.t),
                              "reason": (action.reason if needs_approval else result.reason)[:500]})
        command = decisions.approve_command(ctx.name, ctx.namespace, result.version)
        kopf.info(ctx.body, reason="NeedsApproval" if needs_approval else "CandidateReady",
                  message=f"{action.reason[:800]}: {command}")
    elif action.action == "nothing":
        kopf.info(ctx.body, reason="NothingToFix", message=action.reason[:1000])
    else:
        kopf.info(ctx.body, reason="CandidateRejected" if last["result"] == "Rejected" else "NothingToFix",
                  message=action.reason[:1000])


def finish_heal(ctx: ModelPass, last: dict) -> None:
    ctx.update(lastHeal=last)
    estimated = decisions.performance(last, ctx.t)
    if estimated is not None:
        ctx.update(performance=estimated)
        metrics.observe_performance(ctx.namespace, ctx.name, estimated["accuracy"])
    ctx.set_condition("Healing", False, last["result"], last.get("reason") or "")
    if last["result"] == "Failed":
        kopf.warn(ctx.body, reason="HealFailed", message=f"Job {last['job']}: {last.get('reason')}"[:1000])
    metrics.HEALS_FINISHED.labels(ctx.namespace, ctx.name, last["result"]).inc()


async def expire_heal_job(ctx: ModelPass, *, recorded_heal: LastHeal | None) -> None:
    """Give the last heal Job its ttlSecondsAfterFinished once its result is stored in
    status.lastHeal (`recorded_heal`: as stored, not this pass's working copy): the Job and its
    pod, whose termination message is the result, are deleted only after the operator no longer
    needs them. Nothing reads a finished heal's Job again; the next heal takes the next name."""
    job_name = recorded_heal.job if recorded_heal is not None else None
    if not job_name or recorded_heal.result in (None, "Running") or ctx.memory.expiring_job == job_name:
        return
    ttl = ctx.spec.healing.ttl_seconds_after_finished
    job = await k8s.read("Job", ctx.namespace, job_name)
    job_labels = ((job or {}).get("metadata") or {}).get("labels") or {}
    if job is not None and (job_labels.get(MODEL_LABEL), job_labels.get(COMPONENT_LABEL)) == (ctx.name, "heal") \
            and (job.get("spec") or {}).get("ttlSecondsAfterFinished") != ttl:
        await k8s.patch("Job", ctx.namespace, job_name, {"spec": {"ttlSecondsAfterFinished": ttl}})
    ctx.memory.expiring_job = job_name


async def recheck_registry(ctx: ModelPass) -> None:
    """RegistryUnreachable ends when the registry answers again (checked once per drift check)."""
    if degraded_reason(ctx.working) != "RegistryUnreachable":
        return
    try:
        await asyncio.to_thread(registry_for(ctx).versions)
    except RegistryError:
        return
    ctx.set_condition("Degraded", False, "RegistryReachable", "the registry answers again")


def registry_unreachable(ctx: ModelPass, what: str, err: RegistryError) -> None:
    """Degraded/RegistryUnreachable, with one Event per outage, not one per check
    (`recheck_registry` ends it)."""
    if degraded_reason(ctx.working) != "RegistryUnreachable":
        kopf.warn(ctx.body, reason="RegistryUnreachable", message=f"{what}: {str(err)[:500]}")
    ctx.set_condition("Degraded", True, "RegistryUnreachable", str(err)[:1000])
