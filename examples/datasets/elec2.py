"""Elec2: New South Wales electricity prices, May 1996 - Dec 1998, every half hour (45,312 rows).

The label says whether the NSW price went UP or DOWN against its last-24-hour average. Prices,
demand and the interconnector transfer drift through the seasons and the market's first years, so
a model trained on one stretch of time meets natural concept drift on the next. No change is
induced here.

The file (the normalised version shipped with scikit-multiflow) has no date column; rows are in
time order, 48 per day. Victoria's price, demand and the transfer were not recorded for the first
17,424 rows (they hold one constant value there), so every split starts after that point: a model
trained on constant columns would only learn that they never move.
"""
from __future__ import annotations

import functools
import io

import numpy as np

from examples.datasets.fetch import ArchiveSpec, fetch_archive, read_member
from examples.datasets.splits import hold_out, table_fields
from examples.scenario import Scenario

ARCHIVE = ArchiveSpec(
    package="scikit-multiflow",
    version="0.4.1",
    filename="scikit-multiflow-0.4.1.tar.gz",
    sha256="ed4f791107cb7f789f0bb0620c50e743a4d397905146a4d06c62eb98607aa101",
    source_archive=True,
)
MEMBER = "scikit-multiflow-0.4.1/src/skmultiflow/data/datasets/elec.csv"
FILE_COLUMNS = ["feat_1", "feat_2", "feat_3", "feat_4", "feat_5", "feat_6", "target"]
# What feat_1..feat_6 are: the MOA elecNormNew columns without date and day-of-week.
FEATURES = ["period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer"]
CLASSES = ["DOWN", "UP"]

ROWS_PER_DAY = 48
VICTORIA_RECORDED_FROM = 17_424   # first row where vicprice/vicdemand/transfer are real values
SOURCE_ROWS = 12_000              # 250 days of training period
CLEAN_TEST_FRACTION = 0.15
SIZES = {True: (5_000, 5_000), False: (8_000, 8_000)}   # quick -> stream rows, holdout rows


def parse_elec(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, 6] in FEATURES order, labels [N], 1 = UP) from the elec.csv bytes."""
    text = data.decode("utf-8")
    header, _, body = text.partition("\n")
    names = [name.strip() for name in header.strip().split(",")]
    if names != FILE_COLUMNS:
        raise ValueError(f"elec.csv header is {names}, expected {FILE_COLUMNS}")
    table = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != len(FILE_COLUMNS) or len(table) == 0:
        raise ValueError(f"elec.csv has {table.shape} values, expected rows of {len(FILE_COLUMNS)}")
    labels = table[:, -1]
    if not np.isin(labels, (0.0, 1.0)).all():
        found = sorted(set(labels.tolist()))[:5]
        raise ValueError(f"elec.csv target must be 0 or 1, found {found}")
    return table[:, :-1], labels.astype(np.int64)


@functools.lru_cache(maxsize=1)
def load_table() -> tuple[np.ndarray, np.ndarray]:
    return parse_elec(read_member(fetch_archive(ARCHIVE), MEMBER))


def build_scenario(x: np.ndarray, y: np.ndarray, seed: int = 0, quick: bool = False,
                   start: int = VICTORIA_RECORDED_FROM, source_rows: int = SOURCE_ROWS) -> Scenario:
    """Train on `source_rows` rows from `start`, stream the next period, hold out the one after."""
    n_stream, n_holdout = SIZES[bool(quick)]
    end = start + source_rows
    if end + n_stream + n_holdout > len(y):
        n_holdout = len(y) - end - n_stream
        if n_holdout <= 0:
            raise ValueError(f"Elec2 table has {len(y)} rows, too few for {source_rows} source "
                             f"rows from row {start} and a stream of {n_stream}")
    rng = np.random.default_rng(seed)
    train, clean_test = hold_out(rng, np.arange(start, end), CLEAN_TEST_FRACTION)
    stream = np.arange(end, end + n_stream)
    holdout = np.arange(end + n_stream, end + n_stream + n_holdout)
    return Scenario(
        name="elec2_natural",
        description=(f"natural drift in NSW electricity prices: trained on "
                     f"{_days(np.arange(start, end))}, served the following {_days(stream)} in "
                     f"time order, holdout {_days(holdout)}"),
        **table_fields("elec2", FEATURES, CLASSES, x, y, train=train, clean_test=clean_test, stream=stream,
                       holdout=holdout),
        extra={"shifted_features": None, "source": f"{ARCHIVE.requirement}:{MEMBER}",
               "metric": "accuracy", "clean_counts": True,    # gradual natural drift
               "rows": {"source": [start, end], "stream": [end, end + n_stream],
                        "holdout": [end + n_stream, end + n_stream + n_holdout]}},
    )


def _days(rows: np.ndarray) -> str:
    return f"days {rows[0] // ROWS_PER_DAY}-{rows[-1] // ROWS_PER_DAY}"


def load(seed: int = 0, quick: bool = False) -> Scenario:
    return build_scenario(*load_table(), seed=seed, quick=quick)
