"""Desired state -> children: the Deployment of TorchServe pods, its Service and ConfigMaps (and the
optional PodDisruptionBudget and NetworkPolicy). That they match the spec is the `ChildrenApplied`
condition; whether pods serve is `Ready`, which the timer's pod check owns (shm_operator.readiness).

Runs on create, on every spec change and when the operator (re)starts. What the CRD schema cannot
check (rules that do not parse, thresholds in the wrong order) is reported in a status condition
and an Event, and the operator then changes nothing: a bad edit never takes serving pods down.
"""
from __future__ import annotations

import kopf

from shm_operator import decisions, k8s, metrics
from shm_operator.children import (adapter_config_name, adapter_configmap,
                                   clearing_pod_template, deployment, disruption_budget, inference_url,
                                   rules_configmap, selector_string, service, serving_name)
from shm_operator.context import ModelPass
from shm_operator.crd import RolloutStrategy
from shm_operator.names import ADAPTER_ANNOTATION, RESOURCE
from shm_operator.network_policy import network_policy
from shm_operator.rollout import WaitingForBaseline, accept_version
from shm_operator.status import now, refresh_phase, set_condition_in, update


@kopf.on.resume(*RESOURCE, backoff=10)
@kopf.on.create(*RESOURCE, backoff=10)
@kopf.on.update(*RESOURCE, field="spec", backoff=10)
@metrics.count_errors
async def reconcile(*, name, namespace, spec, status, body, meta, patch, memo, runtime, **_) -> None:
    t = now()
    status = dict(status or {})
    generation = meta.get("generation")
    model, problems = decisions.validated_spec(spec)   # validated once: the schema and the semantics
    if problems:
        message = "; ".join(problems)
        set_condition_in(patch, status, "Ready", False, "InvalidSpec", message, t=t, generation=generation)
        set_condition_in(patch, status, "ChildrenApplied", False, "InvalidSpec", message, t=t, generation=generation)
        update(patch, status, observedGeneration=generation)
        refresh_phase(patch, status)
        kopf.warn(body, reason="InvalidSpec", message=message[:1000])
        return  # nothing to retry until the spec changes
    ctx = ModelPass.of(name, namespace, model, status, body=body, patch=patch, t=t, memo=memo)
    waiting = None
    try:
        version = await accept_version(ctx, runtime=runtime)
    except WaitingForBaseline as wait:   # the rest of the spec applies now; the version after the wait
        version, waiting = wait.serving, wait
    spec = ctx.spec_json   # the children are rendered from the spec as JSON
    served = version
    if ctx.spec.promotion.strategy is RolloutStrategy.HOT_SWAP:
        existing = await k8s.read("Deployment", namespace, serving_name(name))
        if existing is not None:  # HotSwap never restarts pods for a version change
            annotations = existing["spec"]["template"]["metadata"].get("annotations") or {}
            served = annotations.get(ADAPTER_ANNOTATION, version)
    children = [rules_configmap(name, spec), adapter_configmap(name, version), service(name)]
    if memo.get("network_policy"):  # before the pods exist, so they never run unprotected
        children.append(network_policy(name, memo["network_policy"]))
    for child in children:
        kopf.adopt(child, owner=body)
        await k8s.ensure(child, namespace)
    serving = deployment(name, namespace, spec, served)
    kopf.adopt(serving, owner=body)
    await k8s.ensure(serving, namespace, patch_body=clearing_pod_template(serving))
    owned = {"desired": version}
    if not ctx.adapter.last_good:
        owned["lastGood"] = version   # the first version served; the timer moves it after a watch
    budget = await apply_disruption_budget(name, namespace, spec, body)
    ctx.update_adapter(**owned)
    ctx.update(observedGeneration=generation, url=inference_url(name, namespace, spec), selector=selector_string(name))
    ctx.set_condition("ChildrenApplied", True, "ChildrenReconciled",
                      f"Deployment {serving_name(name)}, its Service and ConfigMaps "
                      f"({adapter_config_name(name)}, rules){budget} match the spec", generation)
    ready = next((c for c in ctx.status.conditions if c.type == "Ready"), None)
    if ready is None or ready.reason == "InvalidSpec":   # the timer's pod check takes it from here
        ctx.set_condition("Ready", False, "PodsNotReady", "children applied; waiting for the pods' first check",
                          generation)
    refresh_phase(patch, status)
    if waiting is not None:
        raise waiting   # Kopf writes this pass's patch, then retries after the wait's delay


async def apply_disruption_budget(name, namespace, spec, body) -> str:
    """Create or update the serving pods' PodDisruptionBudget, or delete it when the spec has none
    (it is owned, so it also goes with the model). Returns words for the ChildrenApplied message."""
    budget = disruption_budget(name, spec)
    if budget is None:
        await k8s.delete("PodDisruptionBudget", namespace, serving_name(name))
        return ""
    kopf.adopt(budget, owner=body)
    await k8s.ensure(budget, namespace)
    return ", its PodDisruptionBudget"
