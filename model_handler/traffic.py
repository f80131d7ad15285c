"""Sampled live traffic (features + model outputs, never labels), kept for the healing Job.

Layout: `<uri>/<namespace>/<model>/traffic/<time>-<writer>-<seq>.safetensors`, each shard holding
`x` float32 [n, F] and `probs` float32 [n, C]. Many pods and TorchServe workers write at once, so a
shard is never appended to or shared: each writer makes whole new files whose names sort by time
and cannot collide (UTC time, a writer id, a per-writer sequence), moved into place in one step.
Retention keeps the newest `max_shards`, so storage stays bounded without any coordinator.

The sampler sits on the inference path: it only copies a few rows onto a bounded queue and
returns; a background thread does the I/O. A full queue drops rows and a storage failure is counted
and logged, because losing some training traffic is acceptable and slowing or failing a prediction
is not.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from model_handler.registry import RegistryError, Storage

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".safetensors"


class ShardError(ValueError):
    """A traffic shard that cannot be used (truncated, wrong tensors, wrong shapes)."""


def default_writer_id() -> str:
    """Host (the pod name in Kubernetes) + process + a random tag: unique across pods and workers."""
    raw = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[-60:]


def _as_batch(x, probs, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes; with `dtype=None` keep the caller's arrays as they are (no copy)."""
    x = np.asarray(x) if dtype is None else np.ascontiguousarray(x, dtype=dtype)
    probs = np.asarray(probs) if dtype is None else np.ascontiguousarray(probs, dtype=dtype)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"traffic x must be 2-D [rows, features], got shape {x.shape}")
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise ValueError(f"traffic probs must be 2-D [rows, classes], got shape {probs.shape}")
    if x.shape[0] != probs.shape[0]:
        raise ValueError(f"traffic x has {x.shape[0]} rows but probs has {probs.shape[0]}")
    return x, probs


def decode_shard(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Parse one shard's bytes; anything unusable is a ShardError saying what is wrong."""
    try:
        tensors = load_tensors(bytes(data))
    except (SafetensorError, ValueError) as exc:
        raise ShardError(f"not a readable safetensors file ({exc})") from exc
    missing = {"x", "probs"} - set(tensors)
    if missing:
        raise ShardError(f"missing tensors {sorted(missing)}")
    x, probs = tensors["x"], tensors["probs"]
    for name, array in (("x", x), ("probs", probs)):
        if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] == 0:
            raise ShardError(f"tensor {name} must be non-empty float32 [rows, n], "
                             f"got {array.dtype} {array.shape}")
    if x.shape[0] != probs.shape[0]:
        raise ShardError(f"x has {x.shape[0]} rows but probs has {probs.shape[0]}")
    return x, probs


class TrafficStore:
    """Shards of sampled traffic for one model, bounded to the newest `max_shards`."""

    def __init__(self, uri: str, namespace: str, model: str, shard_rows: int = 4096,
                 max_shards: int = 64, writer_id: str | None = None):
        if shard_rows < 1 or max_shards < 1:
            raise ValueError(f"shard_rows ({shard_rows}) and max_shards ({max_shards}) must be >= 1")
        writer_id = default_writer_id() if writer_id is None else writer_id
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,59}", writer_id):
            raise ValueError(f"writer_id {writer_id!r} must be 1-60 lower-case letters, digits or '-'")
        self.storage = Storage(uri, namespace, model)
        self.shard_rows = shard_rows
        self.max_shards = max_shards
        self.writer_id = writer_id
        self.directory = self.storage.path("traffic")
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self.skipped = 0  # shards skipped by the last read_recent
        self.skip_reasons: dict[str, str] = {}

    def _shard_name(self, created: datetime) -> str:
        with self._lock:
            sequence = next(self._sequence)
        return f"{created:%Y%m%dT%H%M%S%fZ}-{self.writer_id}-{sequence:08d}{SHARD_SUFFIX}"

    def write_shard(self, x, probs, oldest: float | None = None) -> list[str]:
        """Write the rows now, as one shard per `shard_rows` rows; returns the shard names.

        Shards are named by `oldest` (epoch seconds when the oldest row was sampled; default now),
        so `read_recent(since=...)` can take only shards whose every row came after a moment.
        """
        x, probs = _as_batch(x, probs)
        names = []
        for start in range(0, x.shape[0], self.shard_rows):
            stop = start + self.shard_rows
            created = datetime.now(timezone.utc)
            name = self._shard_name(created if oldest is None else datetime.fromtimestamp(oldest, timezone.utc))
            data = save_tensors({"x": x[start:stop], "probs": probs[start:stop]},
                                metadata={"created": created.isoformat(), "writer": self.writer_id,
                                          "rows": str(min(stop, x.shape[0]) - start)})
            self.storage.write_atomic(f"{self.directory}/{name}", data, f"write traffic shard {name}")
            names.append(name)
        self._enforce_retention()
        return names

    def append(self, x, probs) -> None:
        """Buffer rows; every full `shard_rows` is written as a shard. `flush()` writes the rest."""
        x, probs = _as_batch(x, probs)
        with self._lock:
            self._pending.append((x, probs))
            self._pending_rows += x.shape[0]
            if self._pending_rows < self.shard_rows:
                return
            full = (self._pending_rows // self.shard_rows) * self.shard_rows
            xs = np.concatenate([part[0] for part in self._pending])
            ps = np.concatenate([part[1] for part in self._pending])
            self._pending = [(xs[full:], ps[full:])] if full < len(xs) else []
            self._pending_rows = len(xs) - full
        self.write_shard(xs[:full], ps[:full])

    def flush(self) -> None:
        """Write whatever `append` has buffered."""
        with self._lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
        if pending:
            self.write_shard(np.concatenate([p[0] for p in pending]), np.concatenate([p[1] for p in pending]))

    def shards(self) -> list[str]:
        """Shard names, oldest first (names sort by creation time)."""
        found = self.storage.find(self.directory, "list traffic shards", maxdepth=1)
        names = (path.rsplit("/", 1)[-1] for path in found)
        return sorted(n for n in names if n.endswith(SHARD_SUFFIX) and not n.startswith("."))

    def _enforce_retention(self) -> None:
        names = self.shards()
        for name in names[:max(0, len(names) - self.max_shards)]:
            self.storage.remove(f"{self.directory}/{name}", f"delete old traffic shard {name}")

    def read_recent(self, max_rows: int, since: datetime | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to `max_rows` of the newest rows, returned oldest first; with `since`, only shards
        whose rows were all sampled after that time (a heal trains on traffic from after the
        drift began, never on a mix).

        Unusable shards (truncated, corrupt, or with a feature/class count different from the newest
        good shard) are skipped, counted in `skipped` and explained in `skip_reasons`.
        """
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        chunks: list[tuple[np.ndarray, np.ndarray]] = []
        reasons: dict[str, str] = {}
        needed, width = max_rows, None
        cutoff = None if since is None else f"{since.astimezone(timezone.utc):%Y%m%dT%H%M%S%fZ}"
        for name in reversed(self.shards()):
            if needed == 0 or (cutoff is not None and name[:len(cutoff)] < cutoff):
                break
            data = self.storage.read(f"{self.directory}/{name}", f"read traffic shard {name}")
            if data is None:
                continue  # removed by another writer's retention since the listing
            try:
                x, probs = decode_shard(data)
            except ShardError as exc:
                reasons[name] = str(exc)
                continue
            if width is None:
                width = (x.shape[1], probs.shape[1])
            elif (x.shape[1], probs.shape[1]) != width:
                reasons[name] = (f"has {x.shape[1]} features and {probs.shape[1]} classes, newer "
                                 f"shards have {width[0]} and {width[1]}")
                continue
            take = min(needed, x.shape[0])
            chunks.append((x[-take:], probs[-take:]))
            needed -= take
        for name, reason in reasons.items():
            log.warning("skipped traffic shard %s in %s: %s", name, self.storage.where(), reason)
        self.skipped, self.skip_reasons = len(reasons), reasons
        if not chunks:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        chunks.reverse()
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


class TrafficSampler:
    """Samples a fraction of each inference batch into a bounded queue; a daemon thread writes it."""

    def __init__(self, store: TrafficStore, fraction: float = 0.05, max_queue_rows: int = 20_000,
                 flush_rows: int = 1024, flush_interval_s: float = 30.0, seed: int | None = None):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"sampling fraction must be within [0, 1], got {fraction}")
        if max_queue_rows < 1 or flush_rows < 1:
            raise ValueError(f"max_queue_rows ({max_queue_rows}) and flush_rows ({flush_rows}) must be >= 1")
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        self.store = store
        self.fraction = fraction
        self.max_queue_rows = max_queue_rows
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self._rng = np.random.default_rng(seed)
        self._queue: deque[tuple[np.ndarray, np.ndarray, float]] = deque()  # rows, outputs, sampled at
        self._queued_rows = 0
        self._width: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._write_lock = threading.Lock()  # one drain at a time: flush() and the thread
        self._closed = False
        self.sampled = self.written = self.dropped = self.write_errors = self.failed_rows = 0
        self._thread = threading.Thread(target=self._run, name="traffic-sampler", daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def sample(self, x, probs) -> int:
        """Queue ~`fraction` of the rows and return at once; returns how many rows were queued."""
        x, probs = _as_batch(x, probs, dtype=None)  # only the chosen rows are copied
        with self._lock:
            if self._width is None:
                self._width = (x.shape[1], probs.shape[1])
            elif (x.shape[1], probs.shape[1]) != self._width:
                raise ValueError(f"traffic batch has {x.shape[1]} features and {probs.shape[1]} "
                                 f"classes; this sampler has seen {self._width[0]} and {self._width[1]}")
            chosen = np.flatnonzero(self._rng.random(x.shape[0]) < self.fraction)
            self.sampled += chosen.size
            if self._closed:
                self.dropped += chosen.size
                return 0
            room = max(0, self.max_queue_rows - self._queued_rows)
            kept = chosen[:room]
            self.dropped += chosen.size - kept.size
            if kept.size:
                self._queue.append((x[kept].astype(np.float32), probs[kept].astype(np.float32), time.time()))
                self._queued_rows += kept.size
                if self._queued_rows >= self.flush_rows:
                    self._wake.notify()
        return int(kept.size)

    def _take(self, limit: int) -> tuple[np.ndarray, np.ndarray, float] | None:
        """Pop up to `limit` queued rows (oldest first), with when the oldest was sampled."""
        with self._lock:
            parts, rows = [], 0
            while self._queue and rows < limit:
                x, probs, at = self._queue.popleft()
                if rows + x.shape[0] > limit:
                    cut = limit - rows
                    self._queue.appendleft((x[cut:], probs[cut:], at))
                    x, probs = x[:cut], probs[:cut]
                parts.append((x, probs, at))
                rows += x.shape[0]
            self._queued_rows -= rows
        if not parts:
            return None
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), parts[0][2]

    def _drain(self, everything: bool) -> None:
        with self._write_lock:
            while everything or self._queued_rows >= self.flush_rows:
                batch = self._take(self.flush_rows)
                if batch is None:
                    return
                try:
                    self.store.write_shard(batch[0], batch[1], oldest=batch[2])
                except RegistryError as exc:
                    with self._lock:
                        self.write_errors += 1
                        self.failed_rows += batch[0].shape[0]
                    log.warning("traffic sampler lost %d rows: %s", batch[0].shape[0], exc)
                else:
                    with self._lock:
                        self.written += batch[0].shape[0]

    def _run(self) -> None:
        deadline = time.monotonic() + self.flush_interval_s
        while True:
            with self._lock:
                while (not self._closed and self._queued_rows < self.flush_rows
                       and time.monotonic() < deadline):
                    self._wake.wait(timeout=max(0.0, deadline - time.monotonic()))
                closing = self._closed
            interval_over = time.monotonic() >= deadline
            try:
                self._drain(everything=closing or interval_over)
            except Exception:  # never let the thread die silently; the next round retries
                log.exception("traffic sampler flush failed")
            if interval_over:
                deadline = time.monotonic() + self.flush_interval_s
            if closing:
                return

    def flush(self) -> None:
        """Write everything queued now, in the calling thread."""
        self._drain(everything=True)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop sampling, write everything queued, and stop the thread. Safe to call twice."""
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)
        self._drain(everything=True)  # whatever arrived after the thread's last drain

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {"sampled": self.sampled, "written": self.written, "dropped": self.dropped,
                    "write_errors": self.write_errors, "failed_rows": self.failed_rows,
                    "queued_rows": self._queued_rows}
