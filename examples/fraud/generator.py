"""Synthetic card transactions with named, meaningful features and realistic drifts.

Legitimate and fraudulent transactions come from different (overlapping) class-conditional
distributions; fraud is a few percent of traffic. Each drift scenario changes one thing a real
payment stream changes: an upstream unit change, a fraud wave (prior shift), a new fraud pattern
(concept drift), slow inflation (gradual drift), and a new legitimate habit that makes an analyst
rule stale (the negative control, where the right answer is to change nothing).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable
from pathlib import Path

import numpy as np

from examples.scenario import Scenario, Split

FEATURES = ["amount", "hour", "merchant_age_days", "distance_km", "velocity_1h",
            "card_present", "foreign", "account_age_days"]
LOG_FEATURES = ["amount", "merchant_age_days", "distance_km", "account_age_days"]
CLASSES = ["legit", "fraud"]
RULES_FILE = Path(__file__).with_name("rules.yaml")


@dataclass(frozen=True)
class World:
    """Everything a drift can change. Defaults are the training-time world."""

    fraud_rate: float = 0.04
    amount_unit: float = 1.0          # 100.0 = amounts now reported in cents
    distance_unit: float = 1.0        # 1000.0 = distance now reported in metres
    inflation: float = 1.0            # multiplies every amount (prices drift upwards)
    card_testing_share: float = 0.0   # share of fraud that is small-amount card testing
    night_online_legit: float = 0.0   # share of legit that is late-night online ordering


def _legit(rng: np.random.Generator, n: int, world: World) -> np.ndarray:
    x = np.empty((n, len(FEATURES)), np.float64)
    x[:, 0] = rng.lognormal(np.log(45), 0.95, n)
    x[:, 1] = np.mod(rng.normal(14, 3.8, n), 24)
    x[:, 2] = rng.lognormal(np.log(700), 1.2, n)
    x[:, 3] = rng.exponential(9, n)
    x[:, 4] = rng.poisson(0.9, n)
    x[:, 5] = rng.random(n) < 0.62
    x[:, 6] = rng.random(n) < 0.05
    x[:, 7] = rng.lognormal(np.log(1400), 0.9, n)
    night = rng.random(n) < world.night_online_legit
    k = int(night.sum())
    # A delivery app: small/medium orders between midnight and 5am, online, near home.
    x[night, 1] = rng.uniform(0, 5, k)
    x[night, 5] = 0
    x[night, 0] = rng.lognormal(np.log(30), 0.6, k)
    x[night, 3] = rng.exponential(4, k)
    x[night, 2] = rng.lognormal(np.log(1500), 0.6, k)  # the app's established restaurants
    return x


def _fraud(rng: np.random.Generator, n: int, world: World) -> np.ndarray:
    x = np.empty((n, len(FEATURES)), np.float64)
    x[:, 0] = rng.lognormal(np.log(180), 1.15, n)
    night = rng.random(n) < 0.45
    x[:, 1] = np.where(night, rng.uniform(0, 6, n), np.mod(rng.normal(15, 5, n), 24))
    x[:, 2] = rng.lognormal(np.log(150), 1.6, n)
    far = rng.random(n) < 0.55
    x[:, 3] = np.where(far, rng.exponential(250, n), rng.exponential(12, n))
    x[:, 4] = rng.poisson(2.6, n)
    x[:, 5] = rng.random(n) < 0.2
    x[:, 6] = rng.random(n) < 0.3
    x[:, 7] = rng.lognormal(np.log(700), 1.0, n)
    testing = rng.random(n) < world.card_testing_share
    k = int(testing.sum())
    # Card testing: tiny online amounts at established merchants, in short bursts, local.
    x[testing, 0] = rng.uniform(0.5, 3.0, k)
    x[testing, 4] = rng.integers(3, 7, k)
    x[testing, 5] = 0
    x[testing, 2] = rng.lognormal(np.log(700), 1.0, k)
    x[testing, 3] = rng.exponential(9, k)
    x[testing, 6] = 0
    return x


def sample(rng: np.random.Generator, n: int, world: World = World()) -> Split:
    """n transactions of `world`, in random order."""
    y = (rng.random(n) < world.fraud_rate).astype(np.int64)
    x = np.empty((n, len(FEATURES)), np.float64)
    x[y == 0] = _legit(rng, int((y == 0).sum()), world)
    x[y == 1] = _fraud(rng, int(y.sum()), world)
    x[:, 0] *= world.amount_unit * world.inflation
    x[:, 3] *= world.distance_unit
    return Split(x.astype(np.float32), y)


def labelled_rows(world: World, seed: int, n: int = 20000) -> Callable[[], tuple[np.ndarray, str]]:
    """An endless source of (row, true class name) for request loops, cycling over `n` rows of `world`.
    The labels are for measuring accuracy; they never reach selfheal."""
    data = sample(np.random.default_rng(seed), n, world)
    counter = iter(range(10 ** 12))

    def source() -> tuple[np.ndarray, str]:
        k = next(counter) % n
        return data.x[k], CLASSES[data.y[k]]
    return source


def sample_gradual(rng: np.random.Generator, n: int, start: World, end: World) -> Split:
    """A time-ordered stream moving linearly from `start` to `end` (inflation and fraud rate)."""
    parts = []
    chunks = 20
    for i, size in enumerate(np.diff(np.linspace(0, n, chunks + 1).astype(int))):
        t = (i + 0.5) / chunks
        world = replace(start, inflation=start.inflation + t * (end.inflation - start.inflation),
                        fraud_rate=start.fraud_rate + t * (end.fraud_rate - start.fraud_rate))
        parts.append(sample(rng, int(size), world))
    return Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


DRIFTS: dict[str, tuple[str, World, bool]] = {
    # name: (description, drifted world, negative control)
    "fraud_unit_change": ("a processor migration reports amounts in cents and distances in metres; "
                          "the unhealed model flags almost every transaction",
                          World(amount_unit=100.0, distance_unit=1000.0), False),
    "fraud_prior_shift": ("a fraud wave: fraud rises from 4% to 20% of transactions",
                          World(fraud_rate=0.20), False),
    "fraud_new_pattern": ("a new fraud pattern (card testing: tiny online amounts in bursts) the "
                          "backbone never saw; fraud rises to 12%",
                          World(fraud_rate=0.12, card_testing_share=0.6), False),
    "fraud_gradual": ("slow inflation: prices rise to 3x over the stream",
                      World(inflation=3.0), False),
    "fraud_stale_rule": ("negative control: late-night online ordering becomes a common legitimate "
                         "habit; the night rule goes stale, the model is still right",
                         World(night_online_legit=0.25), True),
}


def scenario(name: str, seed: int = 0, quick: bool = False) -> Scenario:
    """Build one fraud scenario; sizes shrink in quick mode."""
    if name not in DRIFTS:
        raise KeyError(f"unknown fraud scenario {name!r}; known: {sorted(DRIFTS)}")
    description, drifted, negative = DRIFTS[name]
    rng = np.random.default_rng(seed)
    n_train, n_stream, n_holdout = (16000, 4000, 4000) if quick else (40000, 8000, 8000)
    train = sample(rng, n_train)
    clean = sample(rng, n_holdout)
    if name == "fraud_gradual":
        stream = sample_gradual(rng, n_stream, World(), drifted)
        holdout = sample(rng, n_holdout, drifted)
    else:
        stream = sample(rng, n_stream, drifted)
        holdout = sample(rng, n_holdout, drifted)
    return Scenario(name=name, domain="fraud", description=description, features=list(FEATURES),
                    classes=list(CLASSES), rules_yaml=RULES_FILE.read_text(), train=train,
                    clean_test=clean, stream=stream, holdout=holdout, negative_control=negative,
                    extra={"log_features": list(LOG_FEATURES)})


def load_scenarios(seed: int = 0, quick: bool = False) -> list[Scenario]:
    return [scenario(name, seed, quick) for name in DRIFTS]
