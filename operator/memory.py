"""What the operator keeps in memory per model between passes, in one small dataclass.

Everything durable lives in the CR's status; this is lost on an operator restart, and each field
says what that costs (at most a window's rows, or one redundant request). Kopf gives every object
its own `memo`; `of(memo)` is this model's `ModelMemory` in it.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from model_handler.rules import RuleSet
from shm_operator.crd import SelfHealingModelSpec
from shm_operator.signals import WindowState


@dataclass
class ModelMemory:
    # observe: the drift window being filled (a restart starts a new one)
    window: WindowState = field(default_factory=WindowState)
    # observe: rows in it at the last check, and when rows last arrived (rollout.baseline_wait asks
    # whether traffic is filling a window a new version should wait for)
    window_rows: int = 0
    traffic_at: dt.datetime | None = None
    # observe: the training data's class rates, for a rollout's baseline and harm watch
    reference_class_rates: dict[str, float] = field(default_factory=dict)
    # monitor: the last drift check, and the spec (full, as JSON and as its model) and rules of the
    # generation checked (context.ModelPass takes the model from here)
    last_check: dt.datetime | None = None
    prepared_generation: int | None = None
    prepared: tuple[dict, SelfHealingModelSpec, RuleSet] | None = None
    # healing: the finished heal Job already given its TTL (a restart patches it once more)
    expiring_job: str | None = None


def of(memo) -> ModelMemory:
    """This model's memory in Kopf's per-object `memo` (any mapping: tests pass a dict)."""
    return memo.setdefault("model", ModelMemory())
