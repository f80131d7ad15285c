"""TorchServe glue around `service.ModelService`; all serving logic lives there.

Archive this file as the handler (`python -m model_handler.archive --handler model_handler/handler.py`)
with a model directory holding model.safetensors, model.json, reference.json and rules.yaml. The
`model_handler` package must be importable by the workers (installed in the image, or on PYTHONPATH).

- inference: each request of TorchServe's batch is parsed on its own; bad ones get their 4xx status
  and message, the rest share one forward pass. Nothing a client sends can kill the worker.
- describe: `GET /models/<name>?customized=true` answers the pod's merged status (all workers).
- metrics (TorchServe's metrics port, Prometheus): drift scores of the pod, the adapter served (as a
  label), rows and rejected requests.
Configuration comes from `SELFHEAL_*` environment variables (see `service.ServiceConfig`).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time

import torch

from model_handler.requests import RequestError, body_of
from model_handler.service import ModelService, ServiceConfig

log = logging.getLogger(__name__)
METRICS_EVERY_S = 5.0    # drift-score gauges (merging every worker's status costs milliseconds)
COUNTERS_EVERY_S = 1.0   # row/rejection counters, summed in between: each emission is a log line


class SelfHealHandler:
    def __init__(self) -> None:
        self.service: ModelService | None = None
        self._metrics_at = 0.0
        self._counted = (0, 0)
        self._counters_at = 0.0
        self._info_version: str | None = None

    def initialize(self, context) -> None:
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(1)  # small MLP per worker: scale with workers, not with threads
        name = context.model_name
        config = ServiceConfig.from_env(model_name=os.environ.get("SELFHEAL_MODEL_NAME") or name)
        if not config.status_dir:  # pod-local: TMPDIR belongs to this TorchServe instance
            config.status_dir = os.path.join(tempfile.gettempdir(), f"selfheal-status-{name}")
        self.service = ModelService.from_model_dir(context.system_properties["model_dir"], config)
        self.service.publish()
        log.info("selfheal worker %s serving adapter %s", self.service.worker_id, self.service.adapter.version)

    def handle(self, data, context) -> list:
        if _is_describe(context):
            return [self.service.pod_status()]
        results = self.service.predict_many([body_of(item) for item in data])
        out = []
        for idx, result in enumerate(results):
            if isinstance(result, RequestError):
                context.set_response_status(result.status, result.message, idx=idx)
                out.append(result.to_dict())
            else:
                out.append(result)
        self._emit_metrics(context)
        return out

    def _emit_metrics(self, context) -> None:
        """Counters at most every COUNTERS_EVERY_S (with all rows since), gauges every METRICS_EVERY_S.

        TorchServe turns every metric update into a log line the frontend parses, so emitting per
        request would cost more than the prediction itself.
        """
        service, now = self.service, time.monotonic()
        if now - self._counters_at < COUNTERS_EVERY_S:
            return
        self._counters_at = now
        rows, rejected = service.rows - self._counted[0], service.rejected - self._counted[1]
        self._counted = (service.rows, service.rejected)
        metrics = context.metrics
        if rows:
            metrics.add_counter("selfheal_rows_total", rows)
        if rejected:
            metrics.add_counter("selfheal_rejected_requests_total", rejected)
        if now - self._metrics_at < METRICS_EVERY_S:
            return
        self._metrics_at = now
        try:
            scores = service.pod_status()["scores"]
        except Exception:  # metrics must never fail a request
            log.exception("selfheal: computing drift scores for metrics failed")
            return
        from ts.metrics.dimension import Dimension
        from ts.metrics.metric_type_enum import MetricTypes

        gauges = {"selfheal_input_shift": scores["input_shift"], "selfheal_rule_conflict": scores["rule_conflict"],
                  "selfheal_prediction_shift": scores["prediction_shift"], "selfheal_samples": scores["samples"]}
        for name, value in gauges.items():
            metrics.add_metric(name, value, "", metric_type=MetricTypes.GAUGE)
        version = service.adapter.version
        if self._info_version not in (None, version):  # the old version's series drops to 0
            metrics.add_metric("selfheal_adapter_info", 0, "", dimensions=[Dimension("version", self._info_version)],
                               metric_type=MetricTypes.GAUGE)
        metrics.add_metric("selfheal_adapter_info", 1, "", dimensions=[Dimension("version", version)],
                           metric_type=MetricTypes.GAUGE)
        self._info_version = version


def _is_describe(context) -> bool:
    return context is not None and context.get_request_header(0, "describe") == "True"


_handler = SelfHealHandler()


def handle(data, context):
    """The entry point TorchServe calls; initialises this worker's service on first use."""
    if _handler.service is None:
        _handler.initialize(context)
    if data is None:
        return None
    return _handler.handle(data, context)
