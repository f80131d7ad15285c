"""The one shape every drift scenario has, synthetic or real, so the benchmark treats them alike.

A scenario is a source distribution the backbone is trained on and a drifted target distribution it
is served on. The healer only ever sees `stream.x` (labels exist for scoring and for the oracle);
`holdout` is fresh target data that nobody trains or selects on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Split:
    """Rows and their labels: x float32 [N, F], y int64 [N] (class indices)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(f"bad split shapes x{self.x.shape} y{self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Scenario:
    name: str                 # unique, e.g. "fraud_unit_change", "ulb_cents", "elec2_natural"
    domain: str               # "fraud", "ulb", "elec2", "adult"
    description: str          # one line: what drifted and how
    features: list[str]
    classes: list[str]
    rules_yaml: str           # the analyst rules (text of a YAML file with a top-level `rules:` list)
    train: Split              # source distribution: backbone training data
    clean_test: Split         # source distribution, held out (forgetting check)
    stream: Split             # drifted traffic, time-ordered: what the pods see and the healer trains on
    holdout: Split            # fresh drifted rows: final scoring only, never seen by any method
    negative_control: bool = False  # True where the right answer is to refuse every candidate
    extra: dict = field(default_factory=dict)
