"""spec.adapter.version changed (the operator promoted, rolled back, or a person patched it):
roll the pods onto it.

RollingRestart puts the version in the pod template, so Kubernetes replaces pods one at a time and
readiness gates traffic (maxUnavailable 0: zero failed requests). HotSwap writes the version into
the ConfigMap the handler watches; pods swap between batches without restarting. A version the
registry does not have is refused in the status and pods keep serving what they serve.
"""
from __future__ import annotations

import asyncio
import logging

import kopf

from model_handler.registry import BASE_VERSION, AdapterNotFoundError, RegistryError
from shm_operator import decisions, k8s, metrics
from shm_operator.children import ADAPTER_ANNOTATION, adapter_config_name, serving_name
from shm_operator.monitor import iso, now, registry_for

log = logging.getLogger(__name__)
HISTORY_LIMIT = 20


@kopf.on.field("selfheal.io", "v1alpha1", "selfhealingmodels", field="spec.adapter.version")
async def adapter_version_changed(name, namespace, spec, status, body, old, new, patch, **_) -> None:
    if old is None or new is None or old == new:
        return  # creation is handled by the reconcile handler
    t = now()
    status = dict(status or {})
    registry = registry_for(name, namespace, spec)
    if new != BASE_VERSION:
        try:
            meta = await asyncio.to_thread(registry.meta, new)
        except AdapterNotFoundError as err:
            decisions.set_condition_in(patch, status, "Degraded", True, "AdapterNotFound", str(err)[:500], t)
            kopf.warn(body, reason="AdapterNotFound",
                      message=f"spec.adapter.version {new!r} is not in the registry; pods keep serving {old!r}")
            return
        except RegistryError as err:
            raise kopf.TemporaryError(f"registry unreachable while checking {new}: {err}", delay=10) from err
        if meta.state == "rejected":
            kopf.warn(body, reason="RejectedAdapter",
                      message=f"{new} was rejected by the promotion gate ({meta.reason[:200]}); serving it anyway "
                              f"because spec.adapter.version says so")
    strategy = (spec.get("promotion") or {}).get("strategy", "RollingRestart")
    if strategy == "HotSwap":
        await k8s.patch("ConfigMap", namespace, adapter_config_name(name), {"data": {"version": new}})
    else:
        await k8s.patch("Deployment", namespace, serving_name(name), {"spec": {"template": {
            "metadata": {"annotations": {ADAPTER_ANNOTATION: new}},
            "spec": {"containers": [{"name": "model-server",
                                     "env": [{"name": "SELFHEAL_ADAPTER_VERSION", "value": new}]}]}}}})
    pending = status.get("pendingPromotion") or {}
    by, reason = ("operator", pending.get("reason", "")) if pending.get("version") == new else \
        ("user", "spec.adapter.version patched")
    history = list(status.get("history") or [])[-(HISTORY_LIMIT - 1):]
    history.append({"version": new, "from": old, "at": iso(t), "by": by, "reason": reason[:300]})
    patch.status["history"] = history
    patch.status["pendingPromotion"] = None
    patch.status["candidate"] = None if status.get("candidate") == new else status.get("candidate")
    patch.status["rollout"] = {"from": old, "to": new, "started": iso(t), "strategy": strategy,
                               "baseline": status.get("drift") or {}, "complete": None}
    decisions.set_condition_in(patch, status, "Degraded", False, "AdapterAccepted", f"rolling out {new}", t)
    kopf.info(body, reason="RollingOut", message=f"adapter {old} -> {new} ({strategy}, by {by})")
    metrics.ADAPTER_CHANGES.labels(namespace, name, by).inc()
    if new != BASE_VERSION:
        try:
            await asyncio.to_thread(registry.set_state, new, "promoted", reason or "spec.adapter.version")
        except RegistryError as err:
            log.warning("could not mark %s promoted in the registry: %s", new, err)
