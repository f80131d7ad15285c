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
from shm_operator import decisions, k8s, memory, metrics, policy
from shm_operator.children import heal_config_map, heal_job
from shm_operator.crd import SelfHealingModelSpec
from shm_operator.job_result import parse_job_result
from shm_operator.names import BASE_VERSION, COMPONENT_LABEL, MODEL_LABEL
from shm_operator.rollout import adapter_expected, candidate_problem, change_version, registry_for
from shm_operator.status import degraded_reason, iso, set_condition_in, update


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
    config = SelfHealingModelSpec.model_validate(spec).heal_job_config()
    if job is None:
        try:
            versions = await asyncio.to_thread(registry_for(name, namespace, spec).versions)
        except RegistryError as err:
            return registry_unreachable(body, patch, status, "cannot start a heal", err, t)
        parent = (status.get("adapter") or {}).get("lastGood") or BASE_VERSION
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
    # Its config file, owned by the Job (deleted with it): its pod waits for this volume
    await k8s.create(heal_config_map(job, config), namespace)
    parent, version = target
    update(patch, status, healCount=count, recentHealStarts=[*recent, iso(t)], healsToday=len(recent) + 1,
           lastHeal={"job": job_name, "version": version, "parent": parent, "started": iso(t), "finished": None,
                     "result": "Running", "reason": decision.reason, "steps": [], "failedChecks": [],
                     "verdict": None, "evidence": [], "estimate": None})
    set_condition_in(patch, status, "Healing", True, "JobStarted", f"Job {job_name} heals {parent} -> {version}", t)
    kopf.info(body, reason="HealStarted", message=f"{decision.reason}; Job {job_name} heals {parent} -> {version} "
                                                  f"(drifting features: {(status.get('drift') or {}).get('topFeatures')})")
    metrics.HEALS_STARTED.labels(namespace, name).inc()


async def follow_heal(name, namespace, spec, status, body, patch, t, memo=None) -> None:
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
    result = parse_job_result(next((m for m in map(k8s.termination_message, pods) if m), ""))
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
            problem = await asyncio.to_thread(candidate_problem, registry, result.version, result.sha256,
                                              *adapter_expected(memo))
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


async def expire_heal_job(name, namespace, spec, recorded_heal: dict, memo) -> None:
    """Give the last heal Job its ttlSecondsAfterFinished once its result is stored in
    status.lastHeal (read from the stored status, not this pass's working copy): the Job and its
    pod, whose termination message is the result, are deleted only after the operator no longer
    needs them. Nothing reads a finished heal's Job again; the next heal takes the next name."""
    job_name = recorded_heal.get("job")
    remembered = memory.of(memo)
    if not job_name or recorded_heal.get("result") in (None, "Running") or remembered.expiring_job == job_name:
        return
    ttl = spec["healing"]["ttlSecondsAfterFinished"]
    job = await k8s.read("Job", namespace, job_name)
    job_labels = ((job or {}).get("metadata") or {}).get("labels") or {}
    if job is not None and (job_labels.get(MODEL_LABEL), job_labels.get(COMPONENT_LABEL)) == (name, "heal") \
            and (job.get("spec") or {}).get("ttlSecondsAfterFinished") != ttl:
        await k8s.patch("Job", namespace, job_name, {"spec": {"ttlSecondsAfterFinished": ttl}})
    remembered.expiring_job = job_name


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
