"""The serving core of one worker: parse, predict, count drift, sample traffic, swap adapters.

Runtime-independent (no TorchServe import): `handler.py` is the TorchServe glue around it, and any
other runtime could host it unchanged. One `ModelService` lives in each worker process and holds

  - the SelfHealingNet (frozen backbone + the adapter being served) and the adapter's version/hash,
  - the RuleSet and this worker's cumulative DriftSketch against the archive's ReferenceProfile,
  - a `traffic.TrafficSampler` that queues a fraction of rows (features + outputs) for the
    TrafficStore; its own thread writes them, so sampling never slows or fails a prediction.

Drift counting and traffic sampling are deferred: a prediction only queues its rows and
probabilities, and the rules, the sketch and the sampler run over everything queued in one
vectorised pass whenever the status is read or published (at least every `publish_interval_s`) or
`COUNT_BATCH_ROWS` rows are waiting. The counters are exactly those of counting each request on its
own (they add), and some thirty numpy calls stop costing every single request.

Adapters change only between batches (`predict_many` checks the desired version first), so a batch
is always served by one adapter. A refused adapter (missing, corrupt, for another backbone,
non-finite) leaves the previous one serving and is reported in the status.

Several workers serve one pod; the describe answer must cover all of them. Each worker publishes
its cumulative status to `<status_dir>/<worker id>.json` (written atomically: temp file + rename),
at most every `publish_interval_s` and whenever it answers a status request; `pod_status()` merges
every file exactly (sketch counters add). Files of workers that died stay, so the pod's counters
never go backwards while the pod lives.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_handler.drift import drift_scores
from model_handler.model import FoldedPredictor, SelfHealingNet
from model_handler.requests import RequestError, RequestParser
from model_handler.rules import RuleSet
from model_handler.registry import BASE_VERSION, AdapterRegistry
from model_handler.served import load_adapter, load_served
from model_handler.sketches import DriftSketch, ReferenceProfile, SketchError
from model_handler.traffic import TrafficSampler, TrafficStore

STATUS_FORMAT = 1
COUNT_BATCH_ROWS = 1024                   # queued rows that trigger counting before the next read

__all__ = ["ModelService", "ServiceConfig", "ServiceError", "merge_statuses"]


class ServiceError(RuntimeError):
    """The service cannot start (unreadable model directory, bad configuration)."""


@dataclass
class ServiceConfig:
    """What a pod tells its workers, through environment variables `SELFHEAL_<FIELD>` (upper case)."""

    model_name: str = "model"                 # the SelfHealingModel's name (registry path)
    namespace: str = "default"
    storage_uri: str = ""                     # fsspec URI of registry + traffic; "" serves `base` only
    adapter_version: str = BASE_VERSION       # the adapter to load at start
    adapter_file: str = ""                    # HotSwap: a file naming the desired version, re-read between batches
    rules_file: str = ""                      # rules YAML replacing the archive's rules.yaml (spec.rules)
    sample_fraction: float = 0.0              # share of rows written to the traffic store
    sample_flush_interval_s: float = 30.0     # the sampler writes a shard at least this often
    status_dir: str = ""                      # pod-local directory where workers publish their status
    max_rows: int = 1024                      # rows per request (413 above)
    publish_interval_s: float = 1.0
    watch_interval_s: float = 0.5
    seed: int | None = None                   # sampling RNG seed (tests)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_fraction <= 1.0:
            raise ServiceError(f"sample_fraction must be in [0, 1], got {self.sample_fraction}")
        if self.sample_flush_interval_s <= 0 or self.max_rows < 1:
            raise ServiceError("sample_flush_interval_s must be > 0 and max_rows >= 1")
        if self.publish_interval_s < 0 or self.watch_interval_s < 0:
            raise ServiceError("publish_interval_s and watch_interval_s must be >= 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServiceConfig:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"SELFHEAL_{f.name.upper()}"
            if key not in environ:
                continue
            raw = environ[key]
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            try:
                if kind.startswith("int"):
                    values[f.name] = int(raw) if raw != "" else None
                elif kind.startswith("float"):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise ServiceError(f"{key}={raw!r} is not a valid {kind.split(' ')[0]}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class AdapterState:
    version: str = BASE_VERSION
    sha256: str = ""                          # of the adapter file; "" for base
    loaded_at: float = field(default_factory=time.time)
    refused: dict[str, str] = field(default_factory=dict)   # version -> why (latest few)
    swaps: int = 0


class ModelService:
    """One worker's serving state. Build with `from_model_dir` in a runtime's initialise step."""

    def __init__(
        self,
        model: SelfHealingNet,
        reference: ReferenceProfile,
        rules: RuleSet,
        config: ServiceConfig,
        *,
        registry=None,
        sampler=None,
        backbone_hash: str = "",
        worker_id: str | None = None,
    ) -> None:
        if model.spec.features != reference.features or model.spec.classes != reference.classes:
            raise ServiceError("the reference profile's features/classes differ from the model's")
        if rules.features != model.spec.features or rules.classes != model.spec.classes:
            raise ServiceError("the rules' features/classes differ from the model's")
        self.model, self.reference, self.rules, self.config = model.eval(), reference, rules, config
        self.registry, self.backbone_hash = registry, backbone_hash
        self.parser = RequestParser(model.spec.features, max_rows=config.max_rows)
        self.rule_labels = rules.label_index
        self.rules_hash = rules.hash()
        # counted under the rules actually served, so sketches of different rule sets never mix
        self._sketch = DriftSketch.empty(reference, len(rules), self.rules_hash)
        self._uncounted: list[tuple[np.ndarray, np.ndarray]] = []   # (x, probs) not yet in the sketch
        self._uncounted_rows = 0
        self.sampler = sampler                    # traffic.TrafficSampler or None
        self.adapter = AdapterState()
        self.predictor = FoldedPredictor(self.model)   # rebuilt on every adapter change
        self.worker_id = worker_id or f"worker-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.started_at = time.time()
        self.requests = self.rows = self.rejected = 0
        self.status_dir = Path(config.status_dir) if config.status_dir else None
        self._last_publish = 0.0
        self._last_watch = -math.inf
        self._watched: tuple[float, int] | None = None
        if config.adapter_version != BASE_VERSION:
            self.load_adapter(config.adapter_version, initial=True)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, config: ServiceConfig, **kwargs) -> ModelService:
        """Load model.safetensors/model.json, reference.json and rules.yaml (unless `config.rules_file`
        names other rules) from an archive directory."""
        model_dir = Path(model_dir)
        try:
            served = load_served(model_dir, config.rules_file or None)
        except (OSError, ValueError) as exc:
            raise ServiceError(f"cannot load the model directory {model_dir}: {exc}") from exc
        if config.storage_uri:
            kwargs.setdefault("registry", AdapterRegistry(config.storage_uri, config.namespace, config.model_name))
            if config.sample_fraction > 0 and "sampler" not in kwargs:
                store = TrafficStore(config.storage_uri, config.namespace, config.model_name)
                kwargs["sampler"] = TrafficSampler(store, config.sample_fraction, seed=config.seed,
                                                   flush_interval_s=config.sample_flush_interval_s)
        if config.status_dir:
            Path(config.status_dir).mkdir(parents=True, exist_ok=True)
        return cls(served.model, served.reference, served.rules, config, backbone_hash=served.backbone_hash,
                   **kwargs)

    # -- serving ----------------------------------------------------------------------------------
    def predict(self, body: Any) -> dict:
        """One request body -> response dict; raises RequestError for bad input."""
        (result,) = self.predict_many([body])
        if isinstance(result, RequestError):
            raise result
        return result

    def predict_many(self, bodies: Sequence[Any]) -> list[dict | RequestError]:
        """A runtime's batch of request bodies -> one response or RequestError per body, in order.

        All valid rows go through the model in one forward pass, under one adapter.
        """
        self.poll_adapter_file()
        parsed: list[np.ndarray | RequestError] = []
        for body in bodies:
            try:
                parsed.append(self.parser.parse(body))
            except RequestError as exc:
                parsed.append(exc)
        good = [p for p in parsed if not isinstance(p, RequestError)]
        self.requests += len(bodies)
        self.rejected += len(bodies) - len(good)
        if not good:
            return parsed
        x = np.concatenate(good) if len(good) > 1 else good[0]
        if len(x) <= self.predictor.max_rows:  # small batches: numpy, microseconds (see FoldedPredictor)
            probs = self.predictor.predict_proba(x)
        else:
            with torch.inference_mode():
                probs = self.model.predict_proba(torch.from_numpy(x)).numpy()
        if not np.isfinite(probs).all():  # inputs near the float32 limit can overflow the network
            x, probs = self._refuse_overflowing(parsed, x, probs)
            if not len(x):
                return parsed
        self._uncounted.append((x, probs))
        self._uncounted_rows += len(x)
        if self._uncounted_rows >= COUNT_BATCH_ROWS:
            self.count_uncounted()
        self.rows += len(x)
        results: list[dict | RequestError] = []
        start, classes, version = 0, self.model.spec.classes, self.adapter.version
        labels = probs.argmax(axis=1)
        for item in parsed:
            if isinstance(item, RequestError):
                results.append(item)
                continue
            stop = start + len(item)
            results.append({
                "probabilities": probs[start:stop].tolist(),
                "label": [classes[k] for k in labels[start:stop]],
                "adapter_version": version,
            })
            start = stop
        self.maybe_publish()
        return results

    def _refuse_overflowing(self, parsed: list, x: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Turn each request with a row whose probabilities are not finite into a 422, in place in
        `parsed`; return the rows of the others. One request must not fail the whole batch."""
        finite = np.isfinite(probs).all(axis=1)
        keep, start = np.ones(len(x), dtype=bool), 0
        for k, item in enumerate(parsed):
            if isinstance(item, RequestError):
                continue
            stop = start + len(item)
            bad = np.flatnonzero(~finite[start:stop])
            if len(bad):
                keep[start:stop] = False
                parsed[k] = RequestError(422, f"row {int(bad[0])}: the model's output is not finite for these "
                                              "values (too large: they overflow float32 inside the network)")
                self.rejected += 1
            start = stop
        return x[keep], probs[keep]

    @property
    def sketch(self) -> DriftSketch:
        """This worker's cumulative drift sketch, every served row counted."""
        self.count_uncounted()
        return self._sketch

    def count_uncounted(self) -> None:
        """Rules, sketch and traffic sampling for every row served since the last count."""
        if not self._uncounted:
            return
        pending, self._uncounted, self._uncounted_rows = self._uncounted, [], 0
        if len(pending) == 1:
            x, probs = pending[0]
        else:
            x, probs = np.concatenate([p[0] for p in pending]), np.concatenate([p[1] for p in pending])
        # Drift and rules are counted on the inputs as the served model sees them, in training units:
        # after a unit change was healed, the rules read amounts in the units they were written in,
        # and the drift signal is about what this adapter still leaves unexplained. The traffic
        # store keeps the raw rows (a heal composes its maps on them).
        seen = self.model.restore_inputs(x)
        self._sketch.update(seen, probs, self.rules.fires_array(seen), self.rule_labels)
        if self.sampler is not None:
            self.sampler.sample(x, probs)  # copies the chosen rows onto its writer's queue and returns

    # -- adapters -----------------------------------------------------------------------------------
    def load_adapter(self, version: str, *, initial: bool = False) -> bool:
        """Serve `version` from now on; on any problem keep the current adapter and record why.

        Returns True when `version` is now being served.
        """
        if version == self.adapter.version:
            return True
        try:
            # every check (sha256, backbone, safetensors, names, shapes, finite, class_prior) before loading
            verified = load_adapter(self.model, self.registry, version, self.backbone_hash)
            digest = verified.sha256 if verified is not None else ""
            self.predictor = FoldedPredictor(self.model)
        except Exception as exc:  # registry errors, corrupt files, validation: all keep the old adapter
            why = f"{type(exc).__name__}: {exc}"[:400]
            self.adapter.refused[version] = why
            while len(self.adapter.refused) > 5:
                self.adapter.refused.pop(next(iter(self.adapter.refused)))
            return False
        self.adapter = AdapterState(version, digest, time.time(), self.adapter.refused, self.adapter.swaps + (not initial))
        self.adapter.refused.pop(version, None)
        return True

    def poll_adapter_file(self, force: bool = False) -> None:
        """HotSwap: if the watched file changed, load the version it names (between batches only)."""
        path = self.config.adapter_file
        now = time.monotonic()
        if not path or (not force and now - self._last_watch < self.config.watch_interval_s):
            return
        self._last_watch = now
        try:
            st = os.stat(path)
            stamp = (st.st_mtime, st.st_size)
            if stamp == self._watched:
                return
            wanted = Path(path).read_text().strip()
        except OSError:
            return  # not mounted yet, or being replaced: try again later
        self._watched = stamp
        if wanted and wanted != self.adapter.version:
            self.load_adapter(wanted)

    def close(self) -> None:
        """Write queued traffic and a last status file (a runtime's shutdown hook; tests)."""
        self.count_uncounted()
        if self.sampler is not None:
            self.sampler.close()
        self.publish()

    # -- status -------------------------------------------------------------------------------------
    def worker_status(self) -> dict:
        self.count_uncounted()
        return {
            "format": STATUS_FORMAT,
            "worker": self.worker_id,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "adapter": {"version": self.adapter.version, "sha256": self.adapter.sha256,
                        "swaps": self.adapter.swaps, "refused": dict(self.adapter.refused)},
            "backbone_hash": self.backbone_hash,
            "rules_hash": self.rules_hash,
            "requests": self.requests, "rows": self.rows, "rejected": self.rejected,
            "traffic": self.sampler.counters() if self.sampler is not None else {},
            "sketch": self.sketch.to_dict(),
        }

    def publish(self) -> Path | None:
        """Write this worker's status file atomically; None when no status_dir is configured."""
        self._last_publish = time.monotonic()
        if self.status_dir is None:
            return None
        target = self.status_dir / f"{self.worker_id}.json"
        fd, tmp = tempfile.mkstemp(dir=self.status_dir, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.worker_status(), f, separators=(",", ":"))
        os.replace(tmp, target)
        return target

    def maybe_publish(self) -> None:
        if time.monotonic() - self._last_publish >= self.config.publish_interval_s:
            self.count_uncounted()   # also without a status_dir: sampled rows must reach the store
            self.publish()

    def pod_status(self) -> dict:
        """Every worker's latest status merged into one answer (this worker's is fresh).

        A status request is between batches too, so it may swap (HotSwap): an idle pod would
        otherwise serve the new adapter only from its next prediction, and report the old one
        until then, so the operator's rollout of an idle model never completes."""
        self.poll_adapter_file()
        self.publish()
        statuses = [self.worker_status()]
        if self.status_dir is not None:
            statuses = []
            for path in sorted(self.status_dir.glob("*.json")):
                try:
                    statuses.append(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue  # a file being replaced right now: its next publish counts
        merged = merge_statuses(statuses, self.reference,
                                alive=lambda status: status["pid"] == os.getpid() or _pid_alive(status["pid"]))
        merged["scores"] = self._scores(merged["sketch"])
        # The operator merges pods' sketches exactly; it needs the profile they are counted against.
        merged["reference"] = self.reference.to_dict()
        return merged

    def _scores(self, sketch_dict: dict) -> dict:
        sketch = DriftSketch.from_dict(sketch_dict, self.reference)
        scores = drift_scores(sketch, self.reference, self.rules)
        return {"samples": scores.samples, "input_shift": scores.input_shift,
                "prediction_shift": scores.prediction_shift, "entropy_shift": scores.entropy_shift,
                "rule_conflict": scores.rule_conflict, "top_features": scores.top_features}


def merge_statuses(statuses: Sequence[dict], reference: ReferenceProfile,
                   alive: Callable[[dict], bool] = lambda status: True) -> dict:
    """Merge worker status dicts exactly.

    Counters (sketch, requests, traffic) add over every worker, dead ones included, so they never go
    backwards while the pod lives. The adapter (version, refusals) is what the live workers serve:
    a worker that died long ago must not make the pod look mixed forever.
    """
    if not statuses:
        raise SketchError("no worker status to merge")
    sketch = None
    for status in statuses:
        part = DriftSketch.from_dict(status["sketch"], reference)
        sketch = part if sketch is None else sketch + part
    live = [s for s in statuses if alive(s)] or list(statuses)
    versions = sorted({(s["adapter"]["version"], s["adapter"]["sha256"]) for s in live})
    refused: dict[str, str] = {}
    for s in live:
        refused.update(s["adapter"].get("refused", {}))
    uniform = len(versions) == 1
    return {
        "format": STATUS_FORMAT,
        "adapter": {
            "version": versions[0][0] if uniform else None,
            "sha256": versions[0][1] if uniform else None,
            "versions": [v for v, _ in versions],
            "refused": refused,
        },
        "backbone_hash": statuses[0]["backbone_hash"],
        "rules_hash": statuses[0]["rules_hash"],
        "workers": [{"worker": s["worker"], "pid": s["pid"], "alive": alive(s), "adapter": s["adapter"]["version"],
                     "rows": s["rows"], "updated_at": s["updated_at"]} for s in statuses],
        "requests": sum(s["requests"] for s in statuses),
        "rejected": sum(s["rejected"] for s in statuses),
        "traffic": _sum_counters([s.get("traffic", {}) for s in statuses]),
        "samples": sketch.n,
        "sketch": sketch.to_dict(),
    }


def _pid_alive(pid: int) -> bool:
    """Whether a process of this pod (same pid namespace) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sum_counters(parts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + int(value)
    return total
