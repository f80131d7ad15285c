"""Small helpers the loaders share: turning row indices into `Split`s and reading rule files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from examples.scenario import Split

RULES_DIR = Path(__file__).parent / "rules"


def to_split(x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None) -> Split:
    """A Split of the given rows (all rows if None), as float32 features and int64 labels."""
    if rows is not None:
        x, y = x[rows], y[rows]
    return Split(np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64))


def hold_out(rng: np.random.Generator, rows: np.ndarray,
             fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Randomly split `rows` into (kept, held_out), each in its original (time) order."""
    chosen = rng.permutation(len(rows))
    n_out = int(round(len(rows) * fraction))
    held = np.sort(chosen[:n_out])
    kept = np.sort(chosen[n_out:])
    return rows[kept], rows[held]


def subsample(rng: np.random.Generator, rows: np.ndarray, n: int) -> np.ndarray:
    """At most `n` of `rows`, drawn without replacement, kept in their original order."""
    if n >= len(rows):
        return rows
    return np.sort(rng.choice(rows, size=n, replace=False))


def rules_text(dataset: str) -> str:
    path = RULES_DIR / f"{dataset}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no rule file for data set {dataset!r} at {path}")
    return path.read_text()


def table_fields(domain: str, features: list[str], classes: list[str], x: np.ndarray, y: np.ndarray, *,
                 train: np.ndarray, clean_test: np.ndarray, stream: np.ndarray,
                 holdout: np.ndarray) -> dict:
    """The `Scenario` fields of a data set whose four splits are row sets of one table (no shift
    applied to the inputs): the domain, features, classes, the domain's rule file and the splits."""
    return {"domain": domain, "features": list(features), "classes": list(classes),
            "rules_yaml": rules_text(domain),
            "train": to_split(x, y, train), "clean_test": to_split(x, y, clean_test),
            "stream": to_split(x, y, stream), "holdout": to_split(x, y, holdout)}
