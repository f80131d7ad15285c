"""The per-model loop: read the pods' drift, decide whether to heal, follow the healing Job, watch
a fresh rollout and roll it back if it harms.

One Kopf timer ticks every few seconds for every SelfHealingModel; each step below is a small
function that reads the spec and status, acts, and returns a status patch. All durable state lives
in the CR's status (so an operator restart resumes where it was, and a Job already launched is
found again by its deterministic name, never launched twice); only the drift window in progress
lives in memory.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging

import aiohttp
import kopf

from model_handler.registry import AdapterRegistry, RegistryError
from model_handler.rules import RuleError, RuleSet
from shm_operator import decisions, k8s, metrics
from shm_operator.children import COMPONENT_LABEL, MODEL_LABEL, heal_job, torchserve_model_name
from shm_operator.signals import PodUnreachable, WindowState, drift_summary, fetch_pod_status, ingest, \
    score_window, trigger_from

log = logging.getLogger(__name__)
TICK_SECONDS = 2.0


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def registry_for(name: str, namespace: str, spec: dict) -> AdapterRegistry:
    return AdapterRegistry((spec.get("storage") or {}).get("uri", ""), namespace, name)


@kopf.timer("selfheal.io", "v1alpha1", "selfhealingmodels", interval=TICK_SECONDS, idle=None)
async def tick(name, namespace, spec, status, body, memo: kopf.Memo, patch, logger, **_) -> None:
    """One pass of the loop; each step skips itself when it has nothing to do."""
    t = now()
    interval = (spec.get("drift") or {}).get("checkIntervalSeconds", 5)
    last = memo.get("last_check")
    if last is not None and (t - last).total_seconds() < interval:
        return
    memo["last_check"] = t
    try:
        rules = RuleSet.from_dicts(spec.get("rules") or [], spec["features"], spec["classes"])
    except (RuleError, KeyError, ValueError):
        return  # reported by the reconcile handler; nothing here may act on an invalid spec
    status = dict(status or {})
    pods, fresh = await observe_pods(name, namespace, spec, status, memo, rules, patch, t)
    await follow_heal(name, namespace, spec, status, body, patch, t)
    if pods:
        await maybe_heal(name, namespace, spec, status, body, patch, t)
        await watch_rollout(name, namespace, spec, status, body, memo, patch, fresh, t)


async def observe_pods(name, namespace, spec, status, memo, rules, patch, t) -> tuple[int, dict | None]:
    """Poll every ready pod, update status.adapter and (for each full window) status.drift.
    Returns the number of ready pods and the drift summary of a window completed now, if any."""
    pods = [p for p in await k8s.list_pods(namespace, {MODEL_LABEL: name, COMPONENT_LABEL: "serving"})
            if k8s.pod_ready(p)]
    state: WindowState = memo.setdefault("window", WindowState())
    ts_name = torchserve_model_name(name, spec)
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(fetch_pod_status(session, p, ts_name) for p in pods),
                                       return_exceptions=True)
    served, unreachable = [], []
    for pod, result in zip(pods, results):
        pod_name = pod["metadata"]["name"]
        if isinstance(result, PodUnreachable):
            unreachable.append(f"{pod_name}: {result}"[:300])
            continue
        if isinstance(result, BaseException):
            raise result
        try:
            ingest(state, pod["metadata"]["uid"], result)
        except (PodUnreachable, ValueError) as err:
            unreachable.append(f"{pod_name}: {err}"[:300])
            continue
        served.append(result["adapter"])
    state.forget_missing({p["metadata"]["uid"] for p in pods})
    desired = (spec.get("adapter") or {}).get("version", "base")
    at_desired = sum(1 for a in served if a.get("version") == desired)
    versions = {a.get("version") for a in served}
    adapter = dict(status.get("adapter") or {})
    adapter.update(desired=desired, podsAtDesired=at_desired, podsTotal=len(pods),
                   current=versions.pop() if len(versions) == 1 else adapter.get("current"))
    refused = {v: why for a in served for v, why in (a.get("refused") or {}).items()}
    patch.status["adapter"] = adapter
    patch.status["unreachablePods"] = unreachable or None
    patch.status["refusedAdapters"] = refused or None
    status["adapter"] = adapter

    window = state.take_window((spec.get("drift") or {}).get("windowRows", 500))
    summary = None
    if window is not None:
        scores = score_window(window, state, rules)
        trigger = trigger_from(spec.get("drift") or {}, (status.get("drift") or {}).get("trigger"))
        was = trigger.drifting
        drifting = trigger.update(scores)
        since = (status.get("drift") or {}).get("since") if was else None
        summary = drift_summary(scores, trigger, since or (iso(t) if drifting else None))
        patch.status["drift"] = summary
        status["drift"] = summary
        metrics.observe_drift(namespace, name, summary)
        if drifting != was:
            decisions.set_condition_in(patch, status, "DriftDetected", drifting,
                                       "BothSignals" if drifting else "Cleared",
                                       f"input shift {scores.input_shift:.3f}, rule conflict "
                                       f"{scores.rule_conflict:.3f}, top features {scores.top_features}", t)
    return len(pods), summary


async def maybe_heal(name, namespace, spec, status, body, patch, t) -> None:
    """Both signals + persistence (the trigger), cooldown, daily budget, mode, not already healing."""
    drift = status.get("drift") or {}
    healing = spec.get("healing") or {}
    last = status.get("lastHeal") or {}
    heals_today = status.get("healsToday", 0) if status.get("healDay") == t.date().isoformat() else 0
    decision = decisions.should_heal(
        now=t, drifting=bool((drift.get("trigger") or {}).get("drifting")),
        mode=healing.get("mode", "Auto"), healing_job=last.get("job") if last.get("result") == "Running" else None,
        last_heal_at=parse_time(last.get("started")), cooldown_seconds=healing.get("cooldownSeconds", 300),
        heals_today=heals_today, max_heals_per_day=healing.get("maxHealsPerDay", 6),
        rolling_out=bool(status.get("rollout")))
    if not decision.act:
        if decision.reason != status.get("_last_skip"):
            log.debug("%s/%s: no heal: %s", namespace, name, decision.reason)
        return
    registry = registry_for(name, namespace, spec)
    try:
        versions = await asyncio.to_thread(registry.versions)
    except RegistryError as err:
        decisions.set_condition_in(patch, status, "Degraded", True, "RegistryUnreachable", str(err)[:500], t)
        kopf.warn(body, reason="RegistryUnreachable", message=str(err)[:500])
        return
    count = status.get("healCount", 0) + 1
    version = decisions.next_version(versions)
    job_name = decisions.heal_job_name(name, count)
    parent = (status.get("adapter") or {}).get("lastGood") or (spec.get("adapter") or {}).get("version", "base")
    job = heal_job(name, namespace, spec, job_name, parent, version, heal_config(spec))
    kopf.adopt(job, owner=body)
    await k8s.ensure(job, namespace)
    patch.status["healCount"] = count
    patch.status["healDay"] = t.date().isoformat()
    patch.status["healsToday"] = heals_today + 1
    patch.status["lastHeal"] = {"job": job_name, "version": version, "parent": parent, "started": iso(t),
                                "finished": None, "result": "Running", "reason": decision.reason, "failed": None}
    decisions.set_condition_in(patch, status, "Healing", True, "JobStarted", f"healing Job {job_name} -> {version}", t)
    kopf.info(body, reason="HealStarted",
              message=f"drift detected ({drift.get('topFeatures')}); Job {job_name} heals {parent} -> {version}")
    metrics.HEALS_STARTED.labels(namespace, name).inc()


def heal_config(spec: dict) -> dict:
    healing, promotion = spec.get("healing") or {}, spec.get("promotion") or {}
    objective = healing.get("objective") or {}
    return {"rules": spec.get("rules") or [],
            "healing": {k: v for k, v in {**objective, "trainingWindowRows": healing.get("trainingWindowRows")}.items()
                        if v is not None},
            "promotion": {k: v for k, v in (promotion.get("gate") or {}).items() if v is not None}}


async def follow_heal(name, namespace, spec, status, body, patch, t) -> None:
    """A running heal Job finished: read its result and promote, await a person, or reject."""
    last = dict(status.get("lastHeal") or {})
    if last.get("result") != "Running":
        return
    job = await k8s.read("Job", namespace, last["job"])
    if job is None:
        last.update(result="Failed", finished=iso(t), reason="the healing Job disappeared")
        return finish_heal(name, namespace, body, patch, status, last, t, success=False)
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
                  if c.get("status") == "True"}
    if not ({"Complete", "Failed"} & set(conditions)):
        return
    pods = await k8s.list_pods(namespace, {"job-name": last["job"]})
    message = next((m for m in map(k8s.termination_message, pods) if m), "")
    result = decisions.parse_job_result(message)
    last["finished"] = iso(t)
    if "Failed" in conditions or result.error:
        why = result.error or conditions.get("Failed", {}).get("reason") or "Job failed"
        last.update(result="Failed", reason=f"{why} {conditions.get('Failed', {}).get('message', '')}".strip()[:500])
        return finish_heal(name, namespace, body, patch, status, last, t, success=False)
    action, why = decisions.promotion_action((spec.get("healing") or {}).get("mode", "Auto"), result)
    last.update(reason=(result.reason or why)[:500], failed=result.failed or None)
    if action == "promote":
        last["result"] = "Promoted"
        patch.spec["adapter"] = {"version": result.version}
        patch.status["pendingPromotion"] = {"version": result.version, "reason": f"healed by {last['job']}"}
        kopf.info(body, reason="Promoting", message=f"candidate {result.version} passed the gate; rolling out")
    elif action == "await-approval":
        last["result"] = "AwaitingApproval"
        patch.status["candidate"] = result.version
        kopf.info(body, reason="CandidateReady",
                  message=f"candidate {result.version} passed the gate; promote it with: kubectl patch shm {name} "
                          f"-n {namespace} --type merge -p '{{\"spec\":{{\"adapter\":{{\"version\":\"{result.version}\"}}}}}}'")
    else:
        last["result"] = "Rejected" if result.version_written else "NothingToFix"
        kopf.info(body, reason="CandidateRejected" if result.version_written else "NothingToFix", message=why[:500])
    finish_heal(name, namespace, body, patch, status, last, t, success=True)


def finish_heal(name, namespace, body, patch, status, last, t, success: bool) -> None:
    patch.status["lastHeal"] = last
    decisions.set_condition_in(patch, status, "Healing", False, last["result"], last.get("reason") or "", t)
    if not success:
        kopf.warn(body, reason="HealFailed", message=f"Job {last['job']}: {last.get('reason')}")
    metrics.HEALS_FINISHED.labels(namespace, name, last["result"]).inc()


async def watch_rollout(name, namespace, spec, status, body, memo, patch, fresh, t) -> None:
    """After a rollout completes, compare live signals with the pre-rollout ones for watchSeconds."""
    rollout = dict(status.get("rollout") or {})
    adapter = status.get("adapter") or {}
    if not rollout or adapter.get("podsAtDesired", 0) < max(adapter.get("podsTotal", 0), 1):
        return
    if not rollout.get("complete"):
        rollout["complete"] = iso(t)
        memo["window"] = WindowState()  # windows from now on hold only new-adapter traffic
        patch.status["rollout"] = rollout
        return
    settings = (spec.get("promotion") or {}).get("rollback") or {}
    elapsed = (t - parse_time(rollout["complete"])).total_seconds()
    if fresh is not None:
        decision = decisions.rollback_check(rollout.get("baseline") or {}, fresh, settings)
        if decision.act and settings.get("automatic", True) and rollout.get("from") is not None:
            await roll_back(name, namespace, spec, status, body, patch, rollout, decision.reason, t)
            return
    if elapsed >= settings.get("watchSeconds", 60):
        adapter = dict(status.get("adapter") or {})
        adapter["lastGood"] = rollout["to"]
        patch.status["adapter"] = {**(patch.status.get("adapter") or adapter), "lastGood": rollout["to"]}
        patch.status["rollout"] = None
        kopf.info(body, reason="RolloutHealthy", message=f"adapter {rollout['to']} watched for {elapsed:.0f}s: healthy")


async def roll_back(name, namespace, spec, status, body, patch, rollout, reason, t) -> None:
    target = rollout["from"]
    patch.spec["adapter"] = {"version": target}
    patch.status["pendingPromotion"] = {"version": target, "reason": f"automatic rollback: {reason}"}
    patch.status["rollout"] = None
    decisions.set_condition_in(patch, status, "RolledBack", True, "HarmDetected",
                               f"{rollout['to']} -> {target}: {reason}", t)
    kopf.warn(body, reason="RolledBack", message=f"adapter {rollout['to']} harmed live signals ({reason}); "
                                                 f"rolled back to {target}")
    metrics.ROLLBACKS.labels(namespace, name, "automatic").inc()
    if rollout["to"] != "base":
        try:
            await asyncio.to_thread(registry_for(name, namespace, spec).set_state, rollout["to"], "rolled-back", reason)
        except RegistryError as err:
            log.warning("could not mark %s rolled back in the registry: %s", rollout["to"], err)
