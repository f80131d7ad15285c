"""The per-model timer: one short, ordered pass over the concerns, every drift check.

One Kopf timer ticks every few seconds for every SelfHealingModel and does real work every
`spec.drift.checkIntervalSeconds` (more often while the model is not Ready). A pass observes the
pods (shm_operator.observe), follows the registry's health and the heal under way, starts a heal if
drift asks for one (shm_operator.healing), and watches a rollout (shm_operator.rollout); then it
refreshes the phase. Each step takes the pass's one typed context (shm_operator.context.ModelPass:
the spec's model, the status read through its models), acts, and writes the status patch. All
durable state lives in the CR's status, so an operator restart resumes where it was and a Job
already launched is found again by its deterministic name (never launched twice). Only the drift
window being filled and the time of the last check live in memory (shm_operator.memory).
"""
from __future__ import annotations

import contextlib

import kopf
from pydantic import ValidationError

from model_handler.rules import RuleSet
from shm_operator import memory, metrics, readiness
from shm_operator.context import ModelPass
from shm_operator.crd import SEMANTICS, SelfHealingModelSpec
from shm_operator.healing import expire_heal_job, follow_heal, maybe_heal, recheck_registry
from shm_operator.names import RESOURCE
from shm_operator.observe import observe_pods
from shm_operator.rollout import watch_rollout
from shm_operator.status import now, phase_of, refresh_phase

TICK_SECONDS = 2.0
# While Ready is not True for the current generation the pods are checked this often (at most), so
# `kubectl wait --for=condition=Ready` returns within seconds of the pods serving.
NOT_READY_CHECK_SECONDS = 4.0


def prepared_spec(spec, meta, memo: kopf.Memo) -> tuple[dict, SelfHealingModelSpec, RuleSet] | None:
    """The defaulted spec (as JSON and as its model) and compiled rules, validated once per
    generation (the timer ticks every few seconds; re-parsing unchanged rules each time would be
    wasted work). None if invalid."""
    generation, remembered = meta.get("generation"), memory.of(memo)
    if remembered.prepared_generation != generation:
        prepared = None
        with contextlib.suppress(ValidationError):   # reported by the reconcile handler
            model = SelfHealingModelSpec.model_validate(dict(spec), context=SEMANTICS)
            full = model.model_dump(mode="json")
            prepared = full, model, RuleSet.from_dicts(full["rules"], full["features"], full["classes"])
        remembered.prepared, remembered.prepared_generation = prepared, generation
    return remembered.prepared


# backoff: after a failed tick (e.g. the API server restarting) try again in seconds, not Kopf's 60.
@kopf.timer(*RESOURCE, interval=TICK_SECONDS, idle=None, backoff=5)
@metrics.count_errors
async def tick(*, name, namespace, spec, status, body, meta, memo: kopf.Memo, patch, serving_pods: kopf.Index,
               **_) -> None:
    t = now()
    prepared = prepared_spec(spec, meta, memo)
    if prepared is None:
        return  # reported by the reconcile handler; nothing here may act on an invalid spec
    full, model, rules = prepared
    remembered = memory.of(memo)
    interval = model.drift.check_interval_seconds
    if not readiness.ready_for(status or {}, meta.get("generation")):
        interval = min(interval, NOT_READY_CHECK_SECONDS)
    if remembered.last_check is not None and (t - remembered.last_check).total_seconds() < interval:
        return
    remembered.last_check = t
    ctx = ModelPass(name, namespace, model, full, dict(status or {}), body, patch, t, remembered, rules)
    if ctx.status.adapter is None or not ctx.status.adapter.desired:
        return  # not reconciled yet
    recorded_heal = ctx.status.last_heal   # as stored, before this pass changes it
    pods = list(serving_pods.get((namespace, name), []))   # shm_operator.observe.serving_pods
    fresh = await observe_pods(ctx, pods=pods)
    await recheck_registry(ctx)
    await follow_heal(ctx)
    await expire_heal_job(ctx, recorded_heal=recorded_heal)
    await maybe_heal(ctx)
    await watch_rollout(ctx, fresh=fresh)
    if patch or phase_of(ctx.working) != ctx.status.phase:
        refresh_phase(patch, ctx.working)
