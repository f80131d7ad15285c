"""Every SelfHealingModel's status as metrics (shm_operator.metrics.observe_status): an event
handler sees each change of the object as the watch delivers it, so the conditions exported are
the stored ones, with no polling and no API call of its own; a deleted model's series go."""
from __future__ import annotations

import kopf

from shm_operator import metrics


@kopf.on.event("selfheal.io", "v1alpha1", "selfhealingmodels")
def export_status(event, name, namespace, status, **_) -> None:
    if event.get("type") == "DELETED":
        metrics.forget_model(namespace, name)
    else:
        metrics.observe_status(namespace, name, dict(status or {}))
