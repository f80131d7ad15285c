"""Drift scores and the heal trigger on synthetic traffic: quiet on stationary data, firing when any
signal (input shift, label shift, rule conflict) moves beyond noise and persists, naming it, and
holding its state in between."""
import json
import math

import numpy as np
import pytest

from model_handler.drift import DriftScores, HealTrigger, describe, drift_scores, psi
from model_handler.rules import RuleSet
from model_handler.sketches import DriftSketch, ReferenceProfile, SketchError

FEATURES = ["amount", "merchant_age", "hour", "velocity"]
CLASSES = ["legit", "fraud"]
RULES = RuleSet.from_dicts([
    {"name": "new_merchant", "when": "merchant_age < 30", "label": "fraud"},
    {"name": "big_amount", "when": "amount > 150", "label": "fraud"},
    {"name": "slow", "when": "velocity <= 1", "label": "legit", "weight": 0.5},
], FEATURES, CLASSES)


def traffic(n, rng, *, amount_scale=1.0, night_only=False, broken_model=False):
    """Rows, the fixed model's probabilities, and rule firings."""
    x = np.column_stack([
        rng.lognormal(3.5, 1.0, n) * amount_scale,
        rng.exponential(100, n),
        rng.integers(0, 6 if night_only else 24, n),
        rng.poisson(2, n),
    ]).astype(np.float32)
    new_merchant = (x[:, 1] < 30) * (-3.0 if broken_model else 3.0)
    logit = 1.5 * (np.log(np.maximum(x[:, 0], 1e-3)) - 4.5) + new_merchant + 0.5 * (x[:, 3] - 2) - 0.5
    fraud = 1 / (1 + np.exp(-logit))
    probs = np.column_stack([1 - fraud, fraud])
    return x, probs, RULES.fires(x).numpy()


@pytest.fixture(scope="module")
def reference():
    x, probs, fires = traffic(20_000, np.random.default_rng(0))
    return ReferenceProfile.fit(x, probs, fires, RULES.labels, FEATURES, CLASSES, rules_hash=RULES.hash())


def window(reference, rows):
    sketch = DriftSketch.empty(reference, len(RULES), RULES.hash())
    x, probs, fires = rows
    sketch.update(x, probs, fires, RULES.labels)
    return sketch


def scores_for(reference, rows, **options):
    return drift_scores(window(reference, rows), reference, RULES, **options)


# ------------------------------------------------------------------------------------------ PSI

def test_psi_values():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    assert psi([50, 50], [90, 10], epsilon=0.0) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5))
    assert psi([50, 50], [90, 10]) == pytest.approx(0.8789, abs=1e-3)
    empty_bin = psi([100, 0], [50, 50])
    assert math.isfinite(empty_bin) and empty_bin > 3
    assert psi([1, 2], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="differ in bins"):
        psi([1, 2], [1, 2, 3])


# ------------------------------------------------------------------------------------------ scores

def test_stationary_window_scores_are_small(reference):
    scores = scores_for(reference, traffic(2000, np.random.default_rng(1)))
    assert not scores.insufficient and scores.samples == 2000
    assert scores.input_shift < 0.02 and scores.prediction_shift < 0.01 and scores.entropy_shift < 0.02
    assert scores.rule_conflict < 0.02 and scores.top_features == []
    assert scores.reference_rules_match
    new_merchant = scores.rules[0]
    assert new_merchant.name == "new_merchant" and not new_merchant.abstained
    assert new_merchant.fire_rate == pytest.approx(1 - math.exp(-0.3), abs=0.03)
    assert new_merchant.conflict_rate == pytest.approx(new_merchant.reference_conflict_rate, abs=0.05)
    # a heuristic rule is trusted as far as it was right at training time
    assert new_merchant.trust == pytest.approx(1.0 - new_merchant.reference_conflict_rate)
    assert scores.label_shift < 0.2 and scores.label_p > 0.01 and scores.input_p > 0.01


def test_unit_change_shifts_inputs_and_conflicts_with_trusted_rules(reference):
    # amounts arrive in hundreds: the stale model now calls almost everything legit, while the
    # merchant-age rule (whose input did not move) keeps firing with label fraud
    scores = scores_for(reference, traffic(2000, np.random.default_rng(2), amount_scale=0.01))
    assert scores.input_shift > 2 and scores.top_features[0] == "amount"
    assert scores.feature_psi["merchant_age"] < 0.02
    assert scores.prediction_shift > 0.1
    by_name = {r.name: r for r in scores.rules}
    assert by_name["new_merchant"].conflict_rate > 0.9 and by_name["new_merchant"].trust > 0.7
    assert by_name["big_amount"].abstained            # amount > 150 no longer happens
    assert by_name["big_amount"].input_psi > 2        # its input drifted ...
    # ... which does not lower its trust: a covariate shift leaves a correct rule correct
    assert by_name["big_amount"].trust == pytest.approx(1.0 - by_name["big_amount"].reference_conflict_rate)
    assert scores.rule_conflict > 0.3
    assert scores.label_shift > 0.4 and scores.label_p < 1e-6 and scores.input_p < 1e-6
    json.dumps(scores.to_dict(), allow_nan=False)      # the operator puts this in the CR status


def test_a_definition_keeps_full_trust_when_its_inputs_drift(reference):
    # The old score silenced rules whose inputs moved (trust = exp(-PSI)): on a shift in the rules'
    # own inputs the rule signal read ~0 exactly when it was needed.
    rows = traffic(2000, np.random.default_rng(3), amount_scale=0.01)
    definitional = RuleSet.from_dicts([dict(r, kind="definition") for r in RULES.to_dicts()], FEATURES, CLASSES)
    sketch = DriftSketch.empty(reference, len(RULES), definitional.hash())
    sketch.update(rows[0], rows[1], rows[2], RULES.labels)
    reference_d = ReferenceProfile.fit(*traffic(20_000, np.random.default_rng(0)), definitional.labels,
                                       FEATURES, CLASSES, rules_hash=definitional.hash())
    defined = drift_scores(sketch, reference_d, definitional)
    heuristic = scores_for(reference, rows)
    assert [r.trust for r in defined.rules] == [r["weight"] for r in definitional.to_dicts()]
    assert all(h.trust < d.trust for h, d in zip(heuristic.rules, defined.rules))
    assert defined.rule_conflict > heuristic.rule_conflict > 0.3


def test_silent_rule_signal_says_why(reference):
    # every rule that fires reads a drifted feature: the status must say so, not just read 0
    only_amount = RuleSet.from_dicts([{"name": "big_amount", "when": "amount > 150", "label": "fraud"}],
                                     FEATURES, CLASSES)
    x, probs, _ = traffic(20_000, np.random.default_rng(0))
    ref = ReferenceProfile.fit(x, probs, only_amount.fires(x).numpy(), only_amount.labels, FEATURES, CLASSES,
                               rules_hash=only_amount.hash())
    x2, probs2, _ = traffic(2000, np.random.default_rng(4), amount_scale=3.0)
    sketch = DriftSketch.empty(ref, 1, only_amount.hash())
    sketch.update(x2, probs2, only_amount.fires(x2).numpy(), only_amount.labels)
    scores = drift_scores(sketch, ref, only_amount)
    assert scores.input_shift > 0.1
    assert "reads a drifted feature" in scores.silent["rules"] or "agrees with the rules" in scores.silent["rules"]
    assert "rules silent" in describe(scores, HealTrigger())


def test_small_windows_are_insufficient_and_rare_rules_abstain(reference):
    scores = scores_for(reference, traffic(50, np.random.default_rng(4), amount_scale=0.01))
    assert scores.insufficient and scores.samples == 50
    assert all(r.abstained == (r.fires < 10) for r in scores.rules)  # min_fires defaults to 10
    empty = drift_scores(DriftSketch.empty(reference, 3, RULES.hash()), reference, RULES)
    assert empty.insufficient and empty.input_shift == 0.0 and empty.rule_conflict == 0.0


def test_reference_fitted_with_other_rules_is_reported(reference):
    other = RuleSet.from_dicts([{"name": "x", "when": "hour > 3", "label": "fraud"}] + RULES.to_dicts()[1:],
                               FEATURES, CLASSES)
    sketch = DriftSketch.empty(reference, 3, other.hash())
    x, probs, _ = traffic(500, np.random.default_rng(5))
    sketch.update(x, probs, other.fires(x).numpy(), other.labels)
    scores = drift_scores(sketch, reference, other)
    assert not scores.reference_rules_match
    assert all(r.reference_conflict_rate == pytest.approx(0.1) for r in scores.rules)  # the prior guess


def test_mismatched_inputs_are_refused(reference):
    sketch = window(reference, traffic(300, np.random.default_rng(6)))
    with pytest.raises(ValueError, match="counts 3 rules but the rule set has 1"):
        drift_scores(sketch, reference, RuleSet.from_dicts(RULES.to_dicts()[:1], FEATURES, CLASSES))
    renamed = RuleSet.from_dicts([dict(r, weight=2.0) for r in RULES.to_dicts()], FEATURES, CLASSES)
    with pytest.raises(ValueError, match="different rule set"):
        drift_scores(sketch, reference, renamed)
    x, probs, fires = traffic(300, np.random.default_rng(7), amount_scale=3)
    other_reference = ReferenceProfile.fit(x, probs, fires, RULES.labels, FEATURES, CLASSES)
    with pytest.raises(SketchError, match="not on"):
        drift_scores(sketch, other_reference, RULES)
    with pytest.raises(ValueError, match="psi_scale > 0"):
        drift_scores(sketch, reference, RULES, psi_scale=0)


# ------------------------------------------------------------------------------------------ trigger

def run_trigger(reference, windows, trigger):
    return [trigger.update(scores_for(reference, rows)) for rows in windows]


def test_stationary_traffic_has_a_low_false_alarm_rate(reference):
    rng = np.random.default_rng(10)
    trigger = HealTrigger()
    all_scores = [scores_for(reference, traffic(500, rng)) for _ in range(200)]
    declared = [trigger.update(s) for s in all_scores]
    input_alarms = np.mean([s.input_shift >= trigger.input_on for s in all_scores])
    conflict_alarms = np.mean([s.rule_conflict >= trigger.conflict_on for s in all_scores])
    assert np.mean(declared) <= 0.01, f"declared drift in {np.mean(declared):.1%} of stationary checks"
    assert input_alarms <= 0.02 and conflict_alarms <= 0.02, (input_alarms, conflict_alarms)


def test_unit_change_is_declared_after_persistence_checks(reference):
    rng = np.random.default_rng(11)
    trigger = HealTrigger(persistence=3)
    calm = run_trigger(reference, [traffic(500, rng) for _ in range(5)], trigger)
    drifted = run_trigger(reference, [traffic(500, rng, amount_scale=0.01) for _ in range(4)], trigger)
    assert calm == [False] * 5
    assert drifted == [False, False, True, True]
    recovered = run_trigger(reference, [traffic(500, rng) for _ in range(2)], trigger)
    assert recovered == [False, False]                 # both signals back below `off`: cleared


@pytest.mark.parametrize("only", ["input", "conflict"])
def test_one_persistent_signal_alone_opens_a_diagnosis(reference, only):
    # The old trigger needed both signals: a drift the rules cannot see was never declared.
    rng = np.random.default_rng(12)
    trigger = HealTrigger(persistence=2)
    if only == "input":   # traffic moved to the night, but neither model nor rules read the hour
        windows = [traffic(500, rng, night_only=True) for _ in range(20)]
    else:                 # a broken model on ordinary traffic: conflicts, no input shift
        windows = [traffic(500, rng, broken_model=True) for _ in range(20)]
    scores = [scores_for(reference, rows) for rows in windows]
    if only == "input":
        assert min(s.input_shift for s in scores) > 1 and max(s.rule_conflict for s in scores) < 0.05
    else:
        assert min(s.rule_conflict for s in scores) > 0.1 and max(s.input_shift for s in scores) < 0.1
    declared = [trigger.update(s) for s in scores]
    assert declared[:2] == [False, True] and all(declared[1:])
    assert ("input" if only == "input" else "rules") in trigger.signals


def fake(input_shift, rule_conflict, insufficient=False, label_shift=0.0, p=0.0):
    return DriftScores(samples=10 if insufficient else 1000, insufficient=insufficient,
                       input_shift=input_shift, prediction_shift=0.0, entropy_shift=0.0,
                       rule_conflict=rule_conflict, label_shift=label_shift, input_p=p, label_p=p)


def test_a_signal_needs_significance_as_well_as_size():
    trigger = HealTrigger(persistence=1)
    assert trigger.update(fake(5.0, 0.0, p=0.5)) is False          # large but within noise (a tiny window)
    assert trigger.update(fake(0.0, 0.0, label_shift=1.0, p=0.5)) is False
    assert trigger.update(fake(0.0, 0.0, label_shift=1.0, p=1e-4)) is True and trigger.signals == ("label",)
    assert trigger.update(fake(0.0, 0.0, label_shift=0.3)) is True                  # between off and on
    assert trigger.update(fake(0.0, 0.0, label_shift=0.1)) is False                 # all below off


def test_hysteresis_between_off_and_on():
    trigger = HealTrigger(input_on=0.25, conflict_on=0.1, input_off=0.1, conflict_off=0.05, persistence=2)
    on, between, off = fake(0.3, 0.2), fake(0.15, 0.07), fake(0.05, 0.01)
    assert [trigger.update(s) for s in (on, between, on, on)] == [False, False, False, True]  # streak restarts
    assert [trigger.update(s) for s in (between, between, fake(0.05, 0.2), fake(0.3, 0.01))] == [True] * 4
    assert trigger.update(off) is False and trigger.consecutive == 0
    assert trigger.update(between) is False


def test_insufficient_windows_neither_count_nor_reset():
    trigger = HealTrigger(persistence=3)
    high_but_small = fake(5.0, 0.9, insufficient=True)
    assert [trigger.update(s) for s in (fake(0.3, 0.2), high_but_small, fake(0.3, 0.2))] == [False] * 3
    assert trigger.consecutive == 2
    assert trigger.update(fake(0.3, 0.2)) is True
    assert trigger.update(fake(0.0, 0.0, insufficient=True)) is True     # cannot clear either


def test_trigger_state_round_trips_and_validates():
    trigger = HealTrigger(persistence=4)
    trigger.update(fake(1.0, 1.0))
    trigger.update(fake(1.0, 1.0))
    state = json.loads(json.dumps(trigger.to_dict()))
    restored = HealTrigger.from_dict(state, persistence=4)
    assert restored == trigger and restored.consecutive == 2
    assert [restored.update(fake(1.0, 1.0)) for _ in range(2)] == [False, True]
    restored.reset()
    assert restored.to_dict() == {"consecutive": 0, "drifting": False, "signals": []}
    assert HealTrigger.from_dict({"consecutive": 1, "drifting": False}).signals == ()   # older status
    for bad in ({"consecutive": 0, "drifting": False, "signals": ["vibes"]}, {"consecutive": 0, "drifting": False,
                                                                              "extra": 1}):
        with pytest.raises(ValueError, match="trigger state"):
            HealTrigger.from_dict(bad)
    for bad in ({"consecutive": -1, "drifting": False}, {"consecutive": 1}, {"consecutive": 1, "drifting": "yes"}):
        with pytest.raises(ValueError, match="trigger state"):
            HealTrigger.from_dict(bad)
    with pytest.raises(ValueError, match="off thresholds must not exceed on"):
        HealTrigger(input_on=0.1, input_off=0.2)
    with pytest.raises(ValueError, match="persistence must be an integer >= 1"):
        HealTrigger(persistence=0)
    with pytest.raises(ValueError, match="conflict_on must be a finite number"):
        HealTrigger(conflict_on=float("nan"))



def test_chi2_sf_matches_scipy_from_the_bulk_to_the_far_tail():
    # The operator runs drift checks without scipy.stats (about 60 MiB it would never free):
    # the p-values its thresholds read must still be scipy's, tiny ones included.
    from scipy.stats import chi2
    from model_handler.drift import chi2_sf
    for df in (1, 2, 3, 7, 10, 19, 50, 99):
        for stat in (1e-6, 0.3, 1.0, df - 0.5, df, df + 1.0, 2.0 * df, 5.0 * df + 10, 200.0, 900.0):
            want = chi2.sf(stat, df)
            assert chi2_sf(stat, df) == pytest.approx(want, rel=1e-9, abs=1e-300), (stat, df)
    assert chi2_sf(0.0, 3) == 1.0 and chi2_sf(float("inf"), 3) == 0.0
    with pytest.raises(ValueError, match="df"):
        chi2_sf(1.0, 0)


def test_a_drift_check_imports_no_scipy():
    import subprocess
    import sys
    code = ("import sys, numpy as np\n"
            "from model_handler.drift import _chi2_p\n"
            "assert _chi2_p(np.array([50, 10, 40]), np.array([0.5, 0.1, 0.4])) > 0.9\n"
            "assert _chi2_p(np.array([10, 80, 10]), np.array([0.5, 0.1, 0.4])) < 1e-12\n"
            "assert 'scipy' not in sys.modules, 'scipy was imported'\n")
    run = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
