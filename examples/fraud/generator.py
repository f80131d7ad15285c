"""Synthetic card transactions with named, meaningful features and realistic drifts.

Legitimate and fraudulent transactions come from different (overlapping) class-conditional
distributions; fraud is a few percent of traffic. Each drift scenario changes one thing a real
payment stream changes: an upstream unit change, a fraud wave (prior shift), a new fraud pattern
(concept drift), slow inflation (gradual drift), and a new legitimate habit that makes an analyst
rule stale (the negative control, where the right answer is to change nothing). Newer ones: a
class-conditional move (legit amounts into fraud's range: a recalibration would hide fraud), a
benign shift of a feature the model has no use for, a fraud wave no rule speaks for, and a unit
change of a plain (not log-scaled) money column next to a zero-inflated one.

Each scenario declares, in `extra`, its primary `metric`, and `clean_counts`: whether traffic from
the old distribution keeps coming (subgroup, label, gradual shifts: then forgetting it is harm) or
the change replaced the old inputs (a unit or pipeline change: the clean data is gone).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable
from pathlib import Path

import numpy as np
import yaml

from examples.scenario import Scenario, Split

FEATURES = ["amount", "hour", "merchant_age_days", "distance_km", "velocity_1h",
            "card_present", "foreign", "account_age_days"]
LOG_FEATURES = ["amount", "merchant_age_days", "distance_km", "account_age_days"]
# Columns only some scenarios have, appended after FEATURES (none is log-scaled by the backbone):
#   page_latency_ms  checkout page load time, the same for both classes (the model has no use for it)
#   fee              the processor's fee in dollars, 2.9% of the amount + 0.30 (a plain money column)
#   cashback         rewards paid out, 0 on most transactions (zero-inflated; fraud rarely has any)
EXTRA_FEATURES = ["page_latency_ms", "fee", "cashback"]
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
    legit_amount_scale: float = 1.0   # legit amounts only (a class-conditional move)
    latency_scale: float = 1.0        # page_latency_ms (a benign shift)
    fee_unit: float = 1.0             # 100.0 = fee now reported in cents


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
    x[:, 0] *= world.legit_amount_scale
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


def sample(rng: np.random.Generator, n: int, world: World = World(), extras: tuple[str, ...] = ()) -> Split:
    """n transactions of `world`, in random order; `extras` (of EXTRA_FEATURES) are appended as
    columns, drawn after all others, so a scenario without them gets the same rows as ever."""
    y = (rng.random(n) < world.fraud_rate).astype(np.int64)
    x = np.empty((n, len(FEATURES)), np.float64)
    x[y == 0] = _legit(rng, int((y == 0).sum()), world)
    x[y == 1] = _fraud(rng, int(y.sum()), world)
    dollars = x[:, 0] * world.inflation
    columns = []
    for name in extras:
        if name == "page_latency_ms":
            columns.append(rng.lognormal(np.log(300), 0.35, n) * world.latency_scale)
        elif name == "fee":
            columns.append((0.30 + 0.029 * dollars) * world.fee_unit)
        elif name == "cashback":
            paid = rng.random(n) < np.where(y == 1, 0.1, 0.5)
            columns.append(np.where(paid, np.round(rng.lognormal(np.log(4), 0.8, n), 2), 0.0))
        else:
            raise KeyError(f"unknown extra feature {name!r}; known: {EXTRA_FEATURES}")
    x[:, 0] *= world.amount_unit * world.inflation
    x[:, 3] *= world.distance_unit
    if columns:
        x = np.column_stack([x, *columns])
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


def sample_gradual(rng: np.random.Generator, n: int, start: World, end: World,
                   extras: tuple[str, ...] = ()) -> Split:
    """A time-ordered stream moving linearly from `start` to `end` (inflation and fraud rate)."""
    parts = []
    chunks = 20
    for i, size in enumerate(np.diff(np.linspace(0, n, chunks + 1).astype(int))):
        t = (i + 0.5) / chunks
        world = replace(start, inflation=start.inflation + t * (end.inflation - start.inflation),
                        fraud_rate=start.fraud_rate + t * (end.fraud_rate - start.fraud_rate))
        parts.append(sample(rng, int(size), world, extras))
    return Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def legit_rules_only() -> str:
    """rules.yaml without its fraud rules: nothing speaks for fraud when fraud rises."""
    rules = yaml.safe_load(RULES_FILE.read_text())["rules"]
    kept = [r for r in rules if r["label"] == "legit"]
    return ("# The card-fraud rules without the fraud ones (examples/fraud/rules.yaml, legit rules only).\n"
            + yaml.safe_dump({"rules": kept}, sort_keys=False))


@dataclass(frozen=True)
class Drift:
    description: str
    world: World
    clean_counts: bool                 # old-distribution traffic keeps coming (forgetting it is harm)
    negative_control: bool = False     # the right answer is to change nothing
    extras: tuple[str, ...] = ()
    rules: Callable[[], str] | None = None   # default: rules.yaml
    extra: dict = field(default_factory=dict)


DRIFTS: dict[str, Drift] = {
    "fraud_unit_change": Drift("a processor migration reports amounts in cents and distances in metres; "
                               "the unhealed model flags almost every transaction",
                               World(amount_unit=100.0, distance_unit=1000.0), clean_counts=False),
    "fraud_prior_shift": Drift("a fraud wave: fraud rises from 4% to 20% of transactions",
                               World(fraud_rate=0.20), clean_counts=True),
    "fraud_new_pattern": Drift("a new fraud pattern (card testing: tiny online amounts in bursts) the "
                               "backbone never saw; fraud rises to 12%",
                               World(fraud_rate=0.12, card_testing_share=0.6), clean_counts=True),
    "fraud_gradual": Drift("slow inflation: prices rise to 3x over the stream", World(inflation=3.0),
                           clean_counts=True),
    "fraud_stale_rule": Drift("negative control: late-night online ordering becomes a common legitimate "
                              "habit; the night rule goes stale, the model is still right",
                              World(night_online_legit=0.25), clean_counts=True, negative_control=True),
    "fraud_class_conditional": Drift(
        "negative control: legitimate customers move to big-ticket purchases (legit amounts x4, into "
        "fraud's range), fraud unchanged; a class-conditional move, not a unit change: recalibrating "
        "amount would make fraud look legitimate", World(legit_amount_scale=4.0), clean_counts=True,
        negative_control=True),
    "fraud_benign_shift": Drift(
        "benign shift: a CDN change triples checkout page latency, a feature the same for both classes "
        "(no harm; ideally no heal Job)", World(latency_scale=3.0), clean_counts=True,
        extras=("page_latency_ms",)),
    "fraud_label_shift_norule": Drift(
        "pure label shift with no rule for the rising class: fraud rises from 4% to 20%, and only the "
        "legit rules are deployed", World(fraud_rate=0.20), clean_counts=True, rules=legit_rules_only),
    "fraud_units_zero_inflated": Drift(
        "the processor reports its fee in cents (x100 on a plain, not log-scaled column); next to it, "
        "cashback is 0 on most rows (zero-inflated) and unchanged", World(fee_unit=100.0), clean_counts=False,
        extras=("fee", "cashback")),
}


def scenario(name: str, seed: int = 0, quick: bool = False) -> Scenario:
    """Build one fraud scenario; sizes shrink in quick mode."""
    if name not in DRIFTS:
        raise KeyError(f"unknown fraud scenario {name!r}; known: {sorted(DRIFTS)}")
    drift = DRIFTS[name]
    rng = np.random.default_rng(seed)
    n_train, n_stream, n_holdout = (16000, 4000, 4000) if quick else (40000, 8000, 8000)
    extras = drift.extras
    train = sample(rng, n_train, World(), extras)
    clean = sample(rng, n_holdout, World(), extras)
    if name == "fraud_gradual":
        stream = sample_gradual(rng, n_stream, World(), drift.world, extras)
    else:
        stream = sample(rng, n_stream, drift.world, extras)
    holdout = sample(rng, n_holdout, drift.world, extras)
    return Scenario(name=name, domain="fraud", description=drift.description,
                    features=[*FEATURES, *extras], classes=list(CLASSES),
                    rules_yaml=drift.rules() if drift.rules else RULES_FILE.read_text(), train=train,
                    clean_test=clean, stream=stream, holdout=holdout, negative_control=drift.negative_control,
                    extra={"log_features": list(LOG_FEATURES), "metric": "accuracy",
                           "clean_counts": drift.clean_counts, "onset_row": 0, **drift.extra})


def load_scenarios(seed: int = 0, quick: bool = False) -> list[Scenario]:
    return [scenario(name, seed, quick) for name in DRIFTS]
