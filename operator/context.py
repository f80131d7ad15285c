"""One typed context per handler pass: what every step of the timer's pass reads, in one object.

A pass (`monitor.tick`) builds one `ModelPass` and hands it to each step (observe, healing,
rollout). The spec is the Pydantic model, validated once per generation (`memory.ModelMemory`
keeps it); the status is read through the status models of `crd.py`, so a misspelt field is an
AttributeError, not a silent None. The status is written only through `status.py`'s patch
functions, on `working`: the pass's working copy, which later steps of the same pass read
(`status` validates it afresh on each read, so a step sees what an earlier step wrote).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from model_handler.rules import RuleSet
from shm_operator import memory as memories
from shm_operator.crd import (AdapterStatus, DriftStatus, LastHeal, SelfHealingModelSpec,
                              SelfHealingModelStatus)
from shm_operator.memory import ModelMemory
from shm_operator.status import set_condition_in, update, update_adapter


@dataclass(frozen=True)
class ModelPass:
    name: str
    namespace: str
    spec: SelfHealingModelSpec     # typed, every default filled in
    spec_json: dict                # the same spec as JSON (camelCase), for the manifest builders
    working: dict                  # the status as this pass knows it; written through status.py
    body: Any
    patch: Any                     # kopf.Patch of this pass
    t: dt.datetime                 # this pass's time
    memory: ModelMemory
    rules: RuleSet | None = None   # compiled spec.rules (the drift check's rule signal)

    @property
    def status(self) -> SelfHealingModelStatus:
        """The status as its model (read-only: write with `update`, `update_adapter`, `set_condition`)."""
        return SelfHealingModelStatus.model_validate(self.working)

    @property
    def adapter(self) -> AdapterStatus:
        """status.adapter, empty if none yet."""
        return self.status.adapter or AdapterStatus()

    @property
    def drift(self) -> DriftStatus:
        """status.drift, empty if no check wrote one yet."""
        return self.status.drift or DriftStatus()

    @property
    def last_heal(self) -> LastHeal:
        """status.lastHeal, empty if the model never healed."""
        return self.status.last_heal or LastHeal()

    def update(self, **fields) -> None:
        update(self.patch, self.working, **fields)

    def update_adapter(self, **keys) -> None:
        update_adapter(self.patch, self.working, **keys)

    def set_condition(self, type_: str, ok: bool, reason: str, message: str, generation: int | None = None) -> None:
        set_condition_in(self.patch, self.working, type_, ok, reason, message, t=self.t, generation=generation)

    @classmethod
    def of(cls, name: str, namespace: str, spec: dict | SelfHealingModelSpec, status: dict, *, body, patch,
           t: dt.datetime, memo=None, rules: RuleSet | None = None) -> ModelPass:
        """A pass over `spec` (a model, or a dict validated now unless it is this generation's prepared
        spec) and `status` (kept as the working copy, not copied)."""
        remembered = memories.of(memo if memo is not None else {})
        full, model, _ = remembered.prepared or (None, None, None)   # this generation's, if the timer prepared it
        if isinstance(spec, SelfHealingModelSpec):
            typed = spec
        else:
            typed = model if full is spec else SelfHealingModelSpec.model_validate(spec)
        spec_json = full if model is typed else typed.model_dump(mode="json")
        return cls(name, namespace, typed, spec_json, status, body, patch, t, remembered, rules)
