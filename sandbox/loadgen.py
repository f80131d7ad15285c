"""A bounded request loop against a model's predictions endpoint, for the demo, the end-to-end
tests and the chaos benchmark.

Loopback only (the sandbox's pod and service addresses are 127.x.y.z), bounded in requests and in
time, and it stops by itself. Each answer is recorded with the adapter version that served it and
whether it was right: the labels come from the data generator and never reach selfheal.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlparse

import numpy as np


@dataclass
class Answer:
    at: float             # seconds since the loop started
    ok: bool              # HTTP 200 with a prediction
    latency_ms: float
    adapter: str | None
    correct: bool | None
    status: int


@dataclass
class LoadLoop:
    """Closed-loop clients posting single rows from `source()` until stopped or bounded."""

    url: str                                           # http://127.x.y.z:port/predictions/<model>
    source: Callable[[], tuple[np.ndarray, str]]       # -> (row, true class name)
    clients: int = 2
    max_requests: int = 100_000
    max_seconds: float = 600.0
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme != "http" or not ipaddress.ip_address(parsed.hostname).is_loopback:
            raise ValueError(f"load loops only target loopback addresses, not {self.url!r}")
        self._host, self._port, self._path = parsed.hostname, parsed.port, parsed.path
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    def start(self) -> "LoadLoop":
        self._started = time.monotonic()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def retarget(self, source: Callable[[], tuple[np.ndarray, str]]) -> None:
        self.source = source

    def _client(self) -> None:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=30)
        while not self._stop.is_set():
            elapsed = time.monotonic() - self._started
            with self._lock:
                if len(self.answers) >= self.max_requests or elapsed >= self.max_seconds:
                    return
            row, label = self.source()
            began = time.monotonic()
            status, adapter, correct = 0, None, None
            try:
                connection.request("POST", self._path, body=json.dumps(np.asarray(row).tolist()),
                                   headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                body = response.read()
                status = response.status
                if status == 200:
                    answer = json.loads(body)
                    adapter = answer.get("adapter_version")
                    predicted = answer["label"][0] if isinstance(answer["label"], list) else answer["label"]
                    correct = predicted == label
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                connection.close()
                connection = http.client.HTTPConnection(self._host, self._port, timeout=30)
            latency = (time.monotonic() - began) * 1000
            with self._lock:
                self.answers.append(Answer(began - self._started, status == 200, latency, adapter, correct, status))
        connection.close()

    # ---- summaries ------------------------------------------------------------------------
    def window(self, seconds: float) -> list[Answer]:
        horizon = time.monotonic() - self._started - seconds
        with self._lock:
            return [a for a in self.answers if a.at >= horizon]

    def between(self, start: float, end: float) -> list[Answer]:
        """Answers sent between two `time.monotonic()` moments."""
        with self._lock:
            return [a for a in self.answers if start - self._started <= a.at <= end - self._started]

    def summary(self, answers: list[Answer] | None = None) -> dict:
        answers = self.answers if answers is None else answers
        done = [a for a in answers if a.ok]
        scored = [a.correct for a in done if a.correct is not None]
        latencies = sorted(a.latency_ms for a in done)
        return {"requests": len(answers), "failed": len(answers) - len(done),
                "accuracy": float(np.mean(scored)) if scored else None,
                "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
                "adapters": sorted({a.adapter for a in done if a.adapter})}
