"""Baseline TorchServe handler: a plain MLP served the usual way, for the serving benchmark.

No drift sketches, no rules, no adapter, no traffic sampling: parse JSON, one forward pass over every
row of the batch TorchServe hands over, return class probabilities. It depends only on torch and
safetensors (never on model_handler) so it runs in any TorchServe worker as a single file.

The archive holds `plain_mlp.safetensors` (tensors `layers.<i>.weight|bias`) and `plain_mlp.json`
(`features`, `classes`, `hidden`); `save_plain_mlp` writes both.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "plain_mlp.safetensors"
CONFIG = "plain_mlp.json"


def build_mlp(n_features: int, hidden: list[int], n_classes: int) -> nn.Sequential:
    sizes = [n_features, *hidden]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], n_classes))
    return nn.Sequential(*layers)


def save_plain_mlp(directory, features: list[str], classes: list[str], hidden=(32, 16), seed: int = 0) -> Path:
    """Write a randomly initialised stand-in MLP (weights + config) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_mlp(len(features), list(hidden), len(classes))
    tensors = {f"layers.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(json.dumps({"features": features, "classes": classes, "hidden": list(hidden)}))
    return directory


def load_plain_mlp(directory) -> tuple[nn.Sequential, dict]:
    directory = Path(directory)
    config = json.loads((directory / CONFIG).read_text())
    model = build_mlp(len(config["features"]), config["hidden"], len(config["classes"]))
    tensors = load_file(str(directory / WEIGHTS))
    model.load_state_dict({k.removeprefix("layers."): v for k, v in tensors.items()})
    return model.eval(), config


class PlainHandler:
    """TorchServe's handler protocol: `initialize(context)` once per worker, then `handle(data, context)`."""

    def __init__(self) -> None:
        self.model: nn.Sequential | None = None
        self.features: list[str] = []
        self.classes: list[str] = []

    def initialize(self, context) -> None:
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(1)  # a tiny MLP per worker: more threads only add contention
        self.model, config = load_plain_mlp(context.system_properties["model_dir"])
        self.features, self.classes = config["features"], config["classes"]

    def _rows(self, body) -> list[list[float]]:
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body)
        if isinstance(body, dict):
            body = body.get("instances", body)
        rows = body if isinstance(body, list) and body and isinstance(body[0], (list, dict)) else [body]
        return [[row[f] for f in self.features] if isinstance(row, dict) else row for row in rows]

    def handle(self, data, context) -> list:
        parsed, errors = [], {}
        for i, item in enumerate(data):
            try:
                rows = self._rows(item.get("body") if item.get("body") is not None else item.get("data"))
                parsed.append(torch.tensor(rows, dtype=torch.float32).reshape(-1, len(self.features)))
            except (ValueError, TypeError, KeyError, RuntimeError) as exc:
                errors[i] = f"bad request: {exc}"
                parsed.append(torch.empty(0, len(self.features)))
        with torch.inference_mode():
            probs = torch.softmax(self.model(torch.cat(parsed)), dim=1)
        out, start = [], 0
        for i, x in enumerate(parsed):
            if i in errors:
                context.set_response_status(400, errors[i], idx=i)
                out.append({"error": errors[i]})
                continue
            p = probs[start:start + len(x)]
            start += len(x)
            out.append({"probabilities": p.tolist(), "label": [self.classes[k] for k in p.argmax(1).tolist()]})
        return out


_service = PlainHandler()


def handle(data, context):
    """Module-level entry point TorchServe calls; initialises the worker's model on first use."""
    if _service.model is None:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
