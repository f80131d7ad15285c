"""Shared helpers for the TorchServe tests: a stand-in model archive and a tiny HTTP client."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import torch

from bench.plain_handler import load_plain_mlp, save_plain_mlp
from model_handler.archive import build_archive

REPO = Path(__file__).resolve().parents[1]
PLAIN_HANDLER = REPO / "bench" / "plain_handler.py"
FEATURES = ["amount", "hour", "distance", "merchant_risk"]
CLASSES = ["legit", "fraud"]


def build_plain_store(root: Path, name: str = "plain", archive_format: str = "mar") -> tuple[Path, Path]:
    """A model store holding the stand-in MLP behind the plain handler; returns (store, archive)."""
    model_dir = save_plain_mlp(root / "model", FEATURES, CLASSES, hidden=(16, 8), seed=7)
    store = root / "store"
    return store, build_archive(model_dir, PLAIN_HANDLER, store, name, archive_format=archive_format)


def expected_probabilities(root: Path, rows: list[list[float]]) -> list[list[float]]:
    """What the served model must answer, computed here with the same weights."""
    model, _ = load_plain_mlp(root / "model")
    with torch.inference_mode():
        return torch.softmax(model(torch.tensor(rows, dtype=torch.float32)), dim=1).tolist()


def post(url: str, body: bytes | str | object, content_type: str = "application/json") -> tuple[int, object]:
    data = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        payload = err.read()
        try:
            return err.code, json.loads(payload)
        except ValueError:
            return err.code, payload.decode(errors="replace")


def post_all(url: str, bodies: list) -> list[tuple[int, object]]:
    """POST every body at once, one thread each, so TorchServe spreads them over its workers (and
    batches them); returns the answers in the order of `bodies` (None where a thread hung past 60 s)."""
    answers: list = [None] * len(bodies)

    def call(i):
        answers[i] = post(url, bodies[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
