"""Desired state -> children: the Deployment of TorchServe pods, its Service and ConfigMaps.

Runs on create, on every spec change and when the operator (re)starts. What the CRD schema cannot
check (rules that do not parse, thresholds in the wrong order) is reported in status conditions and
an Event, and the operator then changes nothing: a bad edit never takes serving pods down.
"""
from __future__ import annotations

import kopf

from shm_operator import decisions, k8s
from shm_operator.children import (ADAPTER_ANNOTATION, adapter_config_name, adapter_configmap, deployment,
                                   rules_configmap, service, serving_name)
from shm_operator.monitor import now


@kopf.on.resume("selfheal.io", "v1alpha1", "selfhealingmodels")
@kopf.on.create("selfheal.io", "v1alpha1", "selfhealingmodels")
@kopf.on.update("selfheal.io", "v1alpha1", "selfhealingmodels", field="spec")
async def reconcile(name, namespace, spec, status, body, meta, patch, **_) -> None:
    t = now()
    status = dict(status or {})
    generation = meta.get("generation")
    problems = decisions.validate_spec_semantics(spec)
    if problems:
        message = "; ".join(problems)[:1000]
        decisions.set_condition_in(patch, status, "Ready", False, "InvalidSpec", message, t, generation)
        patch.status["phase"] = "Failed"
        patch.status["observedGeneration"] = generation
        kopf.warn(body, reason="InvalidSpec", message=message)
        return  # permanent until the spec changes; no retries
    version = (spec.get("adapter") or {}).get("version", "base")
    hot_swap = (spec.get("promotion") or {}).get("strategy") == "HotSwap"
    existing = await k8s.read("Deployment", namespace, serving_name(name))
    served = version
    if hot_swap and existing is not None:
        # HotSwap never restarts pods for a version change: keep the template's version.
        served = (existing["spec"]["template"]["metadata"].get("annotations") or {}).get(ADAPTER_ANNOTATION, version)
    children = [rules_configmap(name, spec), adapter_configmap(name, version), service(name),
                deployment(name, namespace, spec, served)]
    for child in children:
        kopf.adopt(child, owner=body)
        await k8s.ensure(child, namespace)
    adapter = dict(status.get("adapter") or {})
    adapter.setdefault("lastGood", version)
    adapter["desired"] = version
    patch.status["adapter"] = adapter
    patch.status["observedGeneration"] = generation
    if not status.get("phase") or status.get("phase") == "Failed":
        patch.status["phase"] = "Pending"
    decisions.set_condition_in(patch, status, "Ready", True, "ChildrenReconciled",
                               f"Deployment {serving_name(name)}, Service, ConfigMaps "
                               f"{adapter_config_name(name)}/rules are up to date", t, generation)
