"""Every SelfHealingModel's status as metrics (shm_operator.metrics.observe_status): an event
handler sees each change of the object as the watch delivers it, so the conditions exported are
the stored ones, with no polling and no API call of its own; a deleted model's series go. It is
`async` (it does no I/O) so that Kopf runs it in the event loop, not through its thread pool."""
from __future__ import annotations

import kopf

from shm_operator import metrics
from shm_operator.names import RESOURCE


@kopf.on.event(*RESOURCE)
async def export_status(event, name, namespace, status, **_) -> None:
    if event.get("type") == "DELETED":
        metrics.forget_model(namespace, name)
    else:
        metrics.observe_status(namespace, name, dict(status or {}))
