"""Mergeable drift sketches: what live traffic looks like, in integer counters only.

Why counters: a model is served by several TorchServe workers in several pods, and the operator
must see one picture. Integer counts add up exactly, so `a + b` is precisely the sketch one process
would have built from both streams (no averaged percentiles or p-values), in any order, and JSON
carries them without rounding. Like Prometheus counters they only grow, so the traffic between two
polls is `later - earlier`; a negative difference means the process restarted in between, which
`-` reports as `CounterResetError` instead of returning nonsense.

What is counted per row: for each feature the bin its value falls in (bin edges come from the
training data's quantiles, see `ReferenceProfile`; values beyond them land in the open-ended end
bins, NaN/inf in a separate `nonfinite` slot), the predicted class, the normalised entropy of the
prediction (entropy / ln C in 10 fixed bins on [0, 1]), and per rule whether it fired and whether it
conflicted (fired while the model predicted another class than the rule's label).

The reference profile is the same kind of sketch over the training data, plus the bin edges and the
per-feature mean/std; it ships with the model archive. Sketches remember the reference's
fingerprint (features, classes, edges), so sketches made against different bins never mix.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Sequence

import numpy as np

ENTROPY_BINS = 10
FORMAT = 1
COUNTERS = ("n", "bins", "predicted", "entropy", "rule_fires", "rule_conflicts")
SMALLEST_PROBABILITY = float(np.finfo(np.float64).tiny)


class SketchError(ValueError):
    """A sketch or profile that cannot be used as asked (mismatched reference, malformed dict)."""


class CounterResetError(SketchError):
    """`later - earlier` would be negative: the process behind `later` restarted after `earlier`."""


def _array(value, name: str, ndim: int) -> np.ndarray:
    if hasattr(value, "detach"):                     # torch.Tensor, without importing torch here
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {list(array.shape)}")
    return array


def _check_rows(x, probs, rule_fires, rule_labels, n_features: int, n_classes: int,
                n_rules: int | None) -> tuple[np.ndarray, ...]:
    x = _array(x, "x", 2).astype(np.float64, copy=False)
    probs = _array(probs, "probs", 2).astype(np.float64, copy=False)
    rule_fires = _array(rule_fires, "rule_fires", 2)
    rule_labels = _array(rule_labels, "rule_labels", 1)
    n = len(x)
    if x.shape[1] != n_features:
        raise ValueError(f"x has {x.shape[1]} columns, expected {n_features} (one per feature)")
    if probs.shape != (n, n_classes):
        raise ValueError(f"probs must have shape [{n}, {n_classes}] (rows x classes), got {list(probs.shape)}")
    if not np.isfinite(probs).all():
        raise ValueError(f"probs has non-finite values in {int((~np.isfinite(probs)).any(axis=1).sum())} rows")
    expected_rules = rule_labels.shape[0] if n_rules is None else n_rules
    if rule_fires.shape != (n, expected_rules) or rule_labels.shape != (expected_rules,):
        raise ValueError(f"rule_fires must be [{n}, {expected_rules}] and rule_labels [{expected_rules}], "
                         f"got {list(rule_fires.shape)} and {list(rule_labels.shape)}")
    if rule_fires.dtype != np.bool_:
        raise ValueError(f"rule_fires must be boolean, got dtype {rule_fires.dtype}")
    if not np.issubdtype(rule_labels.dtype, np.integer) or ((rule_labels < 0) | (rule_labels >= n_classes)).any():
        raise ValueError(f"rule_labels must be class indices in [0, {n_classes}), got {rule_labels.tolist()}")
    return x, probs, rule_fires, rule_labels


def _prediction_counts(probs: np.ndarray, rule_fires: np.ndarray, rule_labels: np.ndarray) -> dict:
    n, n_classes = probs.shape
    predicted = probs.argmax(axis=1)
    p = np.minimum(np.maximum(probs, SMALLEST_PROBABILITY), 1.0)  # p log p -> 0 as p -> 0, no log(0)
    entropy = (p * np.log(p)).sum(axis=1) * (-1.0 / math.log(n_classes))
    # entropy >= 0 up to rounding, so truncation is the floor (a rounded -0.0... lands in bin 0 too)
    entropy_bin = np.minimum((entropy * ENTROPY_BINS).astype(np.int64), ENTROPY_BINS - 1)
    conflicts = rule_fires & (predicted[:, None] != rule_labels[None, :])
    return {
        "n": np.array(n, dtype=np.int64),
        "predicted": np.bincount(predicted, minlength=n_classes),
        "entropy": np.bincount(entropy_bin, minlength=ENTROPY_BINS),
        "rule_fires": rule_fires.sum(axis=0, dtype=np.int64),
        "rule_conflicts": conflicts.sum(axis=0, dtype=np.int64),
    }


class ReferenceProfile:
    """Bin edges and statistics of the training data; `counts` is a DriftSketch of that data."""

    def __init__(self, features: Sequence[str], classes: Sequence[str], edges: Sequence[np.ndarray],
                 mean: np.ndarray, std: np.ndarray, rules_hash: str | None = None,
                 confusion: np.ndarray | None = None):
        self.features, self.classes = list(features), list(classes)
        # P(predicted i | true j) on labelled held-out source rows, if the trainer had them: what a
        # BBSE label-shift estimate needs (drift.label_shift). Not part of the fingerprint.
        self.confusion = None if confusion is None else _confusion(confusion, len(self.classes))
        self.edges = [np.asarray(e, dtype=np.float64) for e in edges]
        self.mean, self.std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        self.rules_hash = rules_hash
        # one slot per bin (len(edges) + 1 of them) plus the nonfinite slot, features concatenated
        sizes = [len(e) + 2 for e in self.edges]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._nonfinite_slots = self.offsets[1:] - 1   # each feature's last slot
        layout = {"features": self.features, "classes": self.classes, "entropy_bins": ENTROPY_BINS,
                  "edges": [[float(v) for v in e] for e in self.edges]}
        self.fingerprint = hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()
        self.counts: DriftSketch = DriftSketch.empty(self, 0)

    @classmethod
    def fit(cls, x, probs, rule_fires, rule_labels, features: Sequence[str], classes: Sequence[str],
            bins: int = 10, *, rules_hash: str | None = None,
            confusion: np.ndarray | None = None) -> ReferenceProfile:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        if len(classes) < 2:
            raise ValueError(f"need at least 2 classes, got {list(classes)}")
        if len(set(features)) != len(features) or len(set(classes)) != len(classes):
            raise ValueError("feature and class names must be unique")
        x, probs, rule_fires, rule_labels = _check_rows(x, probs, rule_fires, rule_labels,
                                                        len(features), len(classes), None)
        if len(x) < 2:
            raise ValueError(f"need at least 2 reference rows, got {len(x)}")
        edges, mean, std = [], np.full(len(features), np.nan), np.full(len(features), np.nan)
        for column in range(len(features)):
            values = x[:, column][np.isfinite(x[:, column])]
            edges.append(_bin_edges(values, bins))
            if len(values):
                mean[column], std[column] = values.mean(), values.std()
        profile = cls(features, classes, edges, mean, std, rules_hash, confusion)
        profile.counts = DriftSketch.empty(profile, rule_fires.shape[1], rules_hash)
        profile.counts.update(x, probs, rule_fires, rule_labels)
        return profile

    @property
    def n(self) -> int:
        return self.counts.n

    @property
    def n_rules(self) -> int:
        return self.counts.n_rules

    def bin_proportions(self, feature: int | str) -> np.ndarray:
        """Share of reference rows per bin of one feature, the nonfinite slot last."""
        return self.counts.feature_counts(feature) / max(self.n, 1)

    @property
    def class_rates(self) -> np.ndarray:
        """[C] share of reference rows predicted as each class."""
        return self.counts.counters["predicted"] / max(self.n, 1)

    @property
    def rule_fire_rates(self) -> np.ndarray:
        """[R] share of reference rows each rule fired on."""
        return self.counts.counters["rule_fires"] / max(self.n, 1)

    @property
    def rule_conflict_rates(self) -> np.ndarray:
        """[R] share of each rule's firings where the model predicted another class (0 if it never fired)."""
        fires = self.counts.counters["rule_fires"]
        return np.where(fires > 0, self.counts.counters["rule_conflicts"] / np.maximum(fires, 1), 0.0)

    def bin_counts(self, x: np.ndarray) -> np.ndarray:
        """Counts of x's rows per feature bin, all features concatenated (see `offsets`).

        A value's bin is the number of edges <= it; every feature's slots go into one bincount.
        """
        columns = np.ascontiguousarray(np.asarray(x).T)
        slots = np.empty(columns.shape, dtype=np.intp)
        for column, edges in enumerate(self.edges):
            slots[column] = np.searchsorted(edges, columns[column], side="right")
        slots += self.offsets[:-1, None]
        finite = np.isfinite(columns)
        if not finite.all():
            slots = np.where(finite, slots, self._nonfinite_slots[:, None])
        return np.bincount(slots.ravel(), minlength=int(self.offsets[-1])).astype(np.int64, copy=False)

    def to_dict(self) -> dict:
        def floats(values):
            return [None if math.isnan(v) else float(v) for v in values]
        return {"format": FORMAT, "features": self.features, "classes": self.classes,
                "edges": {name: [float(v) for v in e] for name, e in zip(self.features, self.edges)},
                "mean": floats(self.mean), "std": floats(self.std), "rules_hash": self.rules_hash,
                "counts": self.counts.to_dict(),
                **({"confusion": self.confusion.tolist()} if self.confusion is not None else {})}

    @classmethod
    def from_dict(cls, d: dict) -> ReferenceProfile:
        try:
            if d.get("format") != FORMAT:
                raise SketchError(f"unsupported reference profile format {d.get('format')!r} (expected {FORMAT})")
            features, classes = list(d["features"]), list(d["classes"])
            if set(d["edges"]) != set(features):
                raise SketchError("reference profile edges do not name exactly its features")
            edges = [np.array(d["edges"][name], dtype=np.float64) for name in features]
            mean, std = (np.array([np.nan if v is None else v for v in d[k]], dtype=np.float64)
                         for k in ("mean", "std"))
            counts = d["counts"]
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            if isinstance(error, SketchError):
                raise
            raise SketchError(f"malformed reference profile: {type(error).__name__}: {error}") from None
        if any(np.any(np.diff(e) <= 0) or not np.isfinite(e).all() for e in edges):
            raise SketchError("reference profile edges must be finite and strictly increasing")
        if len(mean) != len(features) or len(std) != len(features):
            raise SketchError(f"reference profile mean/std must have {len(features)} values")
        try:
            profile = cls(features, classes, edges, mean, std, d.get("rules_hash"), d.get("confusion"))
        except ValueError as error:
            raise SketchError(f"malformed reference profile: {error}") from None
        profile.counts = DriftSketch.from_dict(counts, profile)
        return profile


def _confusion(matrix, n_classes: int) -> np.ndarray:
    """A [C, C] column-stochastic matrix P(predicted i | true j), checked."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (n_classes, n_classes) or not np.isfinite(m).all() or (m < 0).any() \
            or not np.allclose(m.sum(0), 1.0, atol=1e-6):
        raise ValueError(f"confusion must be a [{n_classes}, {n_classes}] matrix of P(predicted | true) "
                         "whose columns sum to 1")
    return m


def confusion_matrix(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """P(predicted i | true j) of labelled rows; a class without rows gets the identity column."""
    predicted = np.asarray(probs).argmax(1)
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (predicted, np.asarray(labels, dtype=np.int64)), 1.0)
    totals = counts.sum(0)
    out = np.where(totals > 0, counts / np.maximum(totals, 1), np.eye(n_classes))
    return out


def _bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges: one bin per value for discrete features, else deduplicated quantiles."""
    if len(values) == 0:
        return np.zeros(0)
    distinct = np.unique(values)
    if len(distinct) <= bins:
        return distinct
    return np.unique(np.quantile(values, np.arange(1, bins) / bins))


class DriftSketch:
    """Counters of live traffic against one reference profile; exact under `+` and `-`."""

    def __init__(self, reference: ReferenceProfile, counters: dict[str, np.ndarray],
                 rules_hash: str | None = None):
        self.reference, self.counters, self.rules_hash = reference, counters, rules_hash

    @classmethod
    def empty(cls, reference: ReferenceProfile, n_rules: int, rules_hash: str | None = None) -> DriftSketch:
        if isinstance(n_rules, bool) or not isinstance(n_rules, int) or n_rules < 0:
            raise ValueError(f"n_rules must be an integer >= 0, got {n_rules!r}")
        shapes = {"n": (), "bins": (int(reference.offsets[-1]),), "predicted": (len(reference.classes),),
                  "entropy": (ENTROPY_BINS,), "rule_fires": (n_rules,), "rule_conflicts": (n_rules,)}
        return cls(reference, {k: np.zeros(shape, dtype=np.int64) for k, shape in shapes.items()}, rules_hash)

    @property
    def n(self) -> int:
        return int(self.counters["n"])

    @property
    def n_rules(self) -> int:
        return len(self.counters["rule_fires"])

    def feature_counts(self, feature: int | str) -> np.ndarray:
        """[bins + 1] counts for one feature: its bins in order, then the nonfinite slot."""
        column = self.reference.features.index(feature) if isinstance(feature, str) else feature
        return self.counters["bins"][self.reference.offsets[column]:self.reference.offsets[column + 1]]

    def update(self, x, probs, rule_fires, rule_labels) -> None:
        """Count a batch: x [N, F], probs [N, C], rule_fires [N, R] bool, rule_labels [R] class indices."""
        ref = self.reference
        x, probs, rule_fires, rule_labels = _check_rows(x, probs, rule_fires, rule_labels, len(ref.features),
                                                        len(ref.classes), self.n_rules)
        batch = _prediction_counts(probs, rule_fires, rule_labels)
        batch["bins"] = ref.bin_counts(x)
        for key in COUNTERS:
            self.counters[key] = self.counters[key] + batch[key]

    def _check_compatible(self, other: DriftSketch, verb: str) -> None:
        if not isinstance(other, DriftSketch):
            raise TypeError(f"cannot {verb} a DriftSketch and a {type(other).__name__}")
        if other.reference.fingerprint != self.reference.fingerprint:
            raise SketchError(f"cannot {verb} sketches built on different reference profiles "
                              f"({self.reference.fingerprint[:12]} vs {other.reference.fingerprint[:12]}): "
                              "their bins differ; combine only sketches of the same model archive")
        if other.n_rules != self.n_rules or other.rules_hash != self.rules_hash:
            raise SketchError(f"cannot {verb} sketches of different rule sets "
                              f"({self.n_rules} rules, hash {self.rules_hash} vs "
                              f"{other.n_rules} rules, hash {other.rules_hash})")

    def merge(self, other: DriftSketch) -> DriftSketch:
        """The sketch of both inputs together (exact); neither operand changes."""
        self._check_compatible(other, "merge")
        return DriftSketch(self.reference, {k: self.counters[k] + other.counters[k] for k in COUNTERS},
                           self.rules_hash)

    __add__ = merge

    def __sub__(self, earlier: DriftSketch) -> DriftSketch:
        """The window between two cumulative snapshots of one process: `later - earlier`."""
        self._check_compatible(earlier, "subtract")
        window = {k: self.counters[k] - earlier.counters[k] for k in COUNTERS}
        negative = [k for k in COUNTERS if (window[k] < 0).any()]
        if negative:
            raise CounterResetError(f"window would have negative counts ({', '.join(negative)}; n "
                                    f"{self.n} - {earlier.n}): the later snapshot does not continue the "
                                    "earlier one, so its process restarted; use the later snapshot alone")
        return DriftSketch(self.reference, window, self.rules_hash)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DriftSketch):
            return NotImplemented
        return (self.reference.fingerprint == other.reference.fingerprint and self.rules_hash == other.rules_hash
                and all(np.array_equal(self.counters[k], other.counters[k]) for k in COUNTERS))

    def __repr__(self) -> str:
        return f"DriftSketch(n={self.n}, rules={self.n_rules}, reference={self.reference.fingerprint[:12]})"

    def to_dict(self) -> dict:
        ref = self.reference
        features = {}
        for column, name in enumerate(ref.features):
            counts = self.feature_counts(column).tolist()
            features[name] = {"bins": counts[:-1], "nonfinite": counts[-1]}
        return {"format": FORMAT, "reference": ref.fingerprint, "rules_hash": self.rules_hash, "n": self.n,
                "features": features,
                "predicted": dict(zip(ref.classes, self.counters["predicted"].tolist())),
                "entropy": self.counters["entropy"].tolist(),
                "rules": {"fires": self.counters["rule_fires"].tolist(),
                          "conflicts": self.counters["rule_conflicts"].tolist()}}

    @classmethod
    def from_dict(cls, d: dict, reference: ReferenceProfile) -> DriftSketch:
        """Rebuild a sketch from `to_dict()` output, checking it against `reference`."""
        if not isinstance(d, dict):
            raise SketchError(f"a sketch must be a mapping, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise SketchError(f"unsupported sketch format {d.get('format')!r} (expected {FORMAT})")
        if d.get("reference") != reference.fingerprint:
            raise SketchError(f"sketch was built on reference {str(d.get('reference'))[:12]}, not on this "
                              f"reference {reference.fingerprint[:12]} (different model archive or bins)")
        try:
            features, rules = d["features"], d["rules"]
            if list(features) != reference.features:
                raise SketchError(f"sketch features {list(features)} differ from the reference's "
                                  f"{reference.features}")
            bins = []
            for column, name in enumerate(reference.features):
                expected = len(reference.edges[column]) + 1
                got = _ints(features[name]["bins"], f"features[{name!r}].bins")
                if len(got) != expected:
                    raise SketchError(f"features[{name!r}].bins has {len(got)} counts, the reference has "
                                      f"{expected} bins for {name!r}")
                bins.extend(got + _ints([features[name]["nonfinite"]], f"features[{name!r}].nonfinite"))
            if list(d["predicted"]) != reference.classes:
                raise SketchError(f"sketch classes {list(d['predicted'])} differ from the reference's "
                                  f"{reference.classes}")
            counters = {"n": np.array(_ints([d["n"]], "n")[0], dtype=np.int64),
                        "bins": np.array(bins, dtype=np.int64),
                        "predicted": np.array(_ints(list(d["predicted"].values()), "predicted"), dtype=np.int64),
                        "entropy": np.array(_ints(d["entropy"], "entropy"), dtype=np.int64),
                        "rule_fires": np.array(_ints(rules["fires"], "rules.fires"), dtype=np.int64),
                        "rule_conflicts": np.array(_ints(rules["conflicts"], "rules.conflicts"), dtype=np.int64)}
        except (KeyError, TypeError, AttributeError) as error:
            raise SketchError(f"malformed sketch: missing or mistyped {error}") from None
        sketch = cls(reference, counters, d.get("rules_hash"))
        sketch._check_consistent()
        return sketch

    def _check_consistent(self) -> None:
        c, n = self.counters, self.n
        if len(c["entropy"]) != ENTROPY_BINS:
            raise SketchError(f"entropy must have {ENTROPY_BINS} counts, got {len(c['entropy'])}")
        if len(c["rule_fires"]) != len(c["rule_conflicts"]):
            raise SketchError("rules.fires and rules.conflicts must have one count per rule")
        for column, name in enumerate(self.reference.features):
            if self.feature_counts(column).sum() != n:
                raise SketchError(f"features[{name!r}] counts sum to {self.feature_counts(column).sum()}, not n={n}")
        for key in ("predicted", "entropy"):
            if c[key].sum() != n:
                raise SketchError(f"{key} counts sum to {c[key].sum()}, not n={n}")
        if (c["rule_conflicts"] > c["rule_fires"]).any() or (c["rule_fires"] > n).any():
            raise SketchError("rule counts must satisfy conflicts <= fires <= n")


def _ints(values, where: str) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in values):
        raise SketchError(f"{where} must be a list of non-negative integers, got {values!r}"[:200])
    return values
