"""The operator's entry module for `kopf run -m shm_operator.handlers`: settings, then one module
per concern (reconcile children, observe pods, heal, roll out adapter versions; the timer that
orders them), see operator/README.md."""
from __future__ import annotations

import logging
import os

import kopf
from prometheus_client import start_http_server

from model_handler.redact import install_log_redaction
from shm_operator import (healing, k8s, monitor, observe, reconcile, rollout,  # noqa: F401  (registers the handlers)
                          status_metrics)
from shm_operator.names import API_GROUP
from shm_operator.network_policy import network_policy_settings

# Kopf logs "<handler> succeeded." after every call. For the timer (every TICK_SECONDS for every
# model, whether or not a check is due) and the status export (every change of every model) that
# is a line per model every few seconds, most of the log and a good part of the operator's CPU at a
# thousand models; their failures are still logged.
ROUTINE_SUCCESSES = frozenset({f"Timer '{monitor.tick.__name__}' succeeded.",
                               f"Handler '{status_metrics.export_status.__name__}' succeeded."})


def not_routine(record: logging.LogRecord) -> bool:
    return record.msg not in ROUTINE_SUCCESSES


# Before Kopf logs anything about a resource: no storage credentials in the log or in Events.
install_log_redaction()
logging.getLogger("kopf.objects").addFilter(not_routine)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_) -> None:
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP)
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    # A bad setting stops the operator at start, not silently leaves model pods open.
    memo["network_policy"] = network_policy_settings()
    logger.info("per-model NetworkPolicy: %s", "on" if memo["network_policy"] else
                "off ($SELFHEAL_NETWORK_POLICY unset)")
    port = int(os.environ.get("SELFHEAL_METRICS_PORT", "9090"))
    if port:
        start_http_server(port, addr=os.environ.get("SELFHEAL_METRICS_ADDR", "0.0.0.0"))
        logger.info("operator metrics on :%d/metrics", port)


@kopf.on.cleanup()
async def shutdown(**_) -> None:
    await k8s.close()
