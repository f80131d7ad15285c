"""Drift sketches: exact merge, windows by subtraction, JSON round trips, clear errors."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model_handler.rules import RuleSet
from model_handler.sketches import CounterResetError, DriftSketch, ReferenceProfile, SketchError

FEATURES = ["amount", "hour", "is_new", "constant"]
CLASSES = ["legit", "fraud", "review"]
RULES = RuleSet.from_dicts([
    {"name": "big", "when": "amount > 3", "label": "fraud"},
    {"name": "night", "when": "hour < 4", "label": "review"},
    {"name": "new", "when": "is_new == 1", "label": "legit", "weight": 0.5},
], FEATURES, CLASSES)


def make_rows(n, rng, amount_shift=0.0):
    x = np.column_stack([
        rng.lognormal(0.5, 0.8, n) + amount_shift,
        rng.integers(0, 24, n),
        rng.random(n) < 0.2,
        np.full(n, 7.0),
    ]).astype(np.float32)
    logits = np.column_stack([np.zeros(n), x[:, 0] - 3, 0.3 * (4 - x[:, 1])]) + rng.normal(0, 1, (n, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return x, probs.astype(np.float32), RULES.fires(x).numpy()


@pytest.fixture(scope="module")
def reference():
    x, probs, fires = make_rows(5000, np.random.default_rng(0))
    return ReferenceProfile.fit(x, probs, fires, RULES.labels, FEATURES, CLASSES, bins=10, rules_hash=RULES.hash())


def sketch_of(reference, x, probs, fires):
    sketch = DriftSketch.empty(reference, len(RULES), RULES.hash())
    sketch.update(x, probs, fires, RULES.labels)
    return sketch


def test_reference_profile_contents(reference):
    edges = dict(zip(FEATURES, reference.edges))
    assert len(edges["amount"]) == 9                        # 10 quantile bins -> 9 interior edges
    assert edges["is_new"].tolist() == [0.0, 1.0]           # binary: one bin per value, not merged
    assert edges["constant"].tolist() == [7.0]
    amount = reference.counts.feature_counts("amount")
    assert len(amount) == 11 and amount[-1] == 0            # 10 bins, then the (empty) nonfinite slot
    assert np.allclose(amount[:-1] / 5000, 0.1, atol=0.01)  # quantile bins hold ~10% each
    is_new = reference.counts.feature_counts("is_new")
    assert is_new[0] == 0 and is_new[1] + is_new[2] == 5000 and 800 < is_new[2] < 1200
    assert reference.n == 5000 and reference.n_rules == 3
    assert reference.counts.counters["predicted"].sum() == 5000
    assert reference.counts.counters["entropy"].sum() == 5000
    fires = reference.counts.counters["rule_fires"]
    assert (reference.counts.counters["rule_conflicts"] <= fires).all() and (fires > 0).all()
    assert math.isclose(reference.mean[3], 7.0) and reference.std[3] == 0.0
    assert reference.bin_proportions("constant").tolist() == [0.0, 1.0, 0.0]
    assert math.isclose(reference.class_rates.sum(), 1.0)
    x, probs, fired = make_rows(5000, np.random.default_rng(0))     # the same rows the fixture used
    assert np.allclose(reference.rule_fire_rates, fired.mean(axis=0))
    predicted = probs.argmax(axis=1)
    for r, label in enumerate(RULES.labels.tolist()):
        share = (predicted[fired[:, r]] != label).mean()
        assert math.isclose(reference.rule_conflict_rates[r], share)


def test_nonfinite_values_and_values_beyond_the_edges(reference):
    x, probs, _ = make_rows(4, np.random.default_rng(1))
    x[0, 0], x[1, 0], x[2, 0], x[3, 0] = np.nan, np.inf, -1e9, 1e9
    sketch = sketch_of(reference, x, probs, RULES.fires(x).numpy())
    amount = sketch.feature_counts("amount")
    assert amount[-1] == 2 and amount[0] == 1 and amount[-2] == 1


def test_entropy_histogram_bins():
    x = np.zeros((3, 4), dtype=np.float32)
    probs = np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]])
    profile = ReferenceProfile.fit(x, probs, np.zeros((3, 0), bool), np.zeros(0, np.int64), FEATURES, CLASSES)
    entropy = profile.counts.counters["entropy"].tolist()
    # certain -> bin 0; uniform (entropy = ln 3) -> last bin; ln2/ln3 = 0.63 -> bin 6
    assert entropy == [1, 0, 0, 0, 0, 0, 1, 0, 0, 1]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 400), min_size=1, max_size=5))
def test_merging_random_splits_equals_one_sketch_of_the_union(reference, seed, cut_points):
    rng = np.random.default_rng(seed)
    x, probs, fires = make_rows(400, rng, amount_shift=rng.uniform(0, 3))
    x[rng.random(x.shape) < 0.05] = np.nan
    fires = RULES.fires(x).numpy()
    whole = sketch_of(reference, x, probs, fires)
    cuts = [0, *sorted(cut_points), 400]
    parts = [sketch_of(reference, x[a:b], probs[a:b], fires[a:b]) for a, b in zip(cuts, cuts[1:])]
    merged = parts[0]
    for part in reversed(parts[1:]):       # order must not matter
        merged = part + merged
    assert merged == whole and merged.n == 400
    assert merged.to_dict() == whole.to_dict()


def test_update_accumulates_like_a_single_pass(reference):
    x, probs, fires = make_rows(300, np.random.default_rng(2))
    sketch = DriftSketch.empty(reference, 3, RULES.hash())
    for start in range(0, 300, 70):
        sketch.update(torch.from_numpy(x[start:start + 70]), torch.from_numpy(probs[start:start + 70]),
                      torch.from_numpy(fires[start:start + 70]), RULES.labels)
    assert sketch == sketch_of(reference, x, probs, fires)


def test_window_is_later_minus_earlier(reference):
    x, probs, fires = make_rows(600, np.random.default_rng(3))
    cumulative = DriftSketch.empty(reference, 3, RULES.hash())
    cumulative.update(x[:250], probs[:250], fires[:250], RULES.labels)
    earlier = DriftSketch.from_dict(json.loads(json.dumps(cumulative.to_dict())), reference)
    cumulative.update(x[250:], probs[250:], fires[250:], RULES.labels)
    window = cumulative - earlier
    assert window == sketch_of(reference, x[250:], probs[250:], fires[250:])
    assert window.n == 350


def test_subtracting_a_restarted_counter_is_a_reset_error(reference):
    x, probs, fires = make_rows(200, np.random.default_rng(4))
    before_restart = sketch_of(reference, x, probs, fires)
    after_restart = sketch_of(reference, x[:50], probs[:50], fires[:50])
    with pytest.raises(CounterResetError, match="restarted"):
        after_restart - before_restart


def test_reference_round_trips_exactly_through_json(reference):
    text = json.dumps(reference.to_dict(), allow_nan=False)
    again = ReferenceProfile.from_dict(json.loads(text))
    assert again.to_dict() == reference.to_dict()
    assert again.fingerprint == reference.fingerprint
    assert all(np.array_equal(a, b) for a, b in zip(again.edges, reference.edges))
    assert again.counts == reference.counts and again.rules_hash == RULES.hash()


def test_feature_without_finite_values_round_trips():
    x = np.zeros((5, 4), dtype=np.float32)
    x[:, 2] = np.nan
    profile = ReferenceProfile.fit(x, np.full((5, 3), 1 / 3), np.zeros((5, 0), bool), np.zeros(0, np.int64),
                                   FEATURES, CLASSES)
    assert profile.edges[2].size == 0 and math.isnan(profile.mean[2])
    data = json.loads(json.dumps(profile.to_dict(), allow_nan=False))
    assert data["mean"][2] is None and ReferenceProfile.from_dict(data).counts == profile.counts


def test_sketches_of_different_references_or_rules_do_not_mix(reference):
    x, probs, fires = make_rows(500, np.random.default_rng(5), amount_shift=1.0)
    other_reference = ReferenceProfile.fit(x, probs, fires, RULES.labels, FEATURES, CLASSES)
    ours = DriftSketch.empty(reference, 3, RULES.hash())
    theirs = DriftSketch.empty(other_reference, 3, RULES.hash())
    with pytest.raises(SketchError, match="different reference profiles"):
        ours + theirs
    with pytest.raises(SketchError, match="different reference profiles"):
        ours - theirs
    with pytest.raises(SketchError, match="different rule sets"):
        ours + DriftSketch.empty(reference, 2)
    with pytest.raises(SketchError, match="not on this reference"):
        DriftSketch.from_dict(theirs.to_dict(), reference)


def test_from_dict_says_what_is_wrong(reference):
    good = sketch_of(reference, *make_rows(50, np.random.default_rng(6))).to_dict()

    def broken(change):
        d = json.loads(json.dumps(good))
        change(d)
        return d
    cases = [
        (lambda d: d["features"]["amount"]["bins"].pop(),
         "features['amount'].bins has 9 counts, the reference has 10 bins"),
        (lambda d: d["features"].pop("hour"), "differ from the reference's"),
        (lambda d: d["features"]["hour"]["bins"].__setitem__(0, -1), "non-negative integers"),
        (lambda d: d["features"]["hour"]["bins"].__setitem__(0, 1.5), "non-negative integers"),
        (lambda d: d["features"]["hour"].__setitem__("nonfinite", 3), "features['hour'] counts sum to 53, not n=50"),
        (lambda d: d.__setitem__("n", 51), "sum to 50, not n=51"),
        (lambda d: d["rules"]["conflicts"].__setitem__(0, 10**6), "conflicts <= fires <= n"),
        (lambda d: d["rules"].pop("fires"), "malformed sketch"),
        (lambda d: d.__setitem__("format", 99), "unsupported sketch format 99"),
        (lambda d: d["predicted"].pop("review"), "classes"),
    ]
    for change, fragment in cases:
        with pytest.raises(SketchError) as caught:
            DriftSketch.from_dict(broken(change), reference)
        assert fragment in str(caught.value), (fragment, str(caught.value))


def test_update_rejects_bad_batches(reference):
    x, probs, fires = make_rows(10, np.random.default_rng(7))
    sketch = DriftSketch.empty(reference, 3)
    with pytest.raises(ValueError, match="x has 3 columns, expected 4"):
        sketch.update(x[:, :3], probs, fires, RULES.labels)
    with pytest.raises(ValueError, match=r"probs must have shape \[10, 3\]"):
        sketch.update(x, probs[:, :2], fires, RULES.labels)
    with pytest.raises(ValueError, match="non-finite values in 1 rows"):
        sketch.update(x, np.where(np.arange(10)[:, None] == 0, np.nan, probs), fires, RULES.labels)
    with pytest.raises(ValueError, match=r"rule_fires must be \[10, 3\]"):
        sketch.update(x, probs, fires[:, :2], RULES.labels[:2])
    with pytest.raises(ValueError, match="class indices"):
        sketch.update(x, probs, fires, np.array([0, 1, 5]))
    with pytest.raises(ValueError, match="boolean"):
        sketch.update(x, probs, fires.astype(int), RULES.labels)
    assert sketch.n == 0                                  # nothing was half-counted


def test_fit_rejects_bad_arguments():
    x, probs, fires = make_rows(10, np.random.default_rng(8))
    with pytest.raises(ValueError, match="bins must be an integer >= 2"):
        ReferenceProfile.fit(x, probs, fires, RULES.labels, FEATURES, CLASSES, bins=1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ReferenceProfile.fit(x, probs[:, :1], fires, RULES.labels, FEATURES, ["only"])
    with pytest.raises(ValueError, match="x has 4 columns, expected 3"):
        ReferenceProfile.fit(x, probs, fires, RULES.labels, FEATURES[:3], CLASSES)
