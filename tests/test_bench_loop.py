"""bench.loop replays the operator's own decisions: windows with minSamples, cooldown in seconds,
harm by any metric, and scenario declarations."""
import numpy as np
import pytest

from bench import loop as bench_loop
from bench.healing import harm_keys
from bench.loop import OperatorLoop, Traffic, run_stream, scenario_spec
from bench.metrics import harms
from examples.fraud import generator
from model_handler.healing import HealResult
from model_handler.rules import RuleSet
from model_handler.sketches import DriftSketch, ReferenceProfile
from model_handler.training import train_backbone
from shm_operator import policy
from shm_operator.signals import WindowState, score_window


@pytest.fixture(scope="module")
def fraud():
    rng = np.random.default_rng(0)
    train = generator.sample(rng, 3000)
    model = train_backbone(train.x, train.y, generator.FEATURES, generator.CLASSES,
                           log_features=generator.LOG_FEATURES, epochs=3, seed=0)
    rules_yaml = generator.RULES_FILE.read_text()
    rules = RuleSet.from_yaml(rules_yaml, generator.FEATURES, generator.CLASSES)
    reference = ReferenceProfile.fit(train.x, model.predict_proba(train.x).numpy(), rules.fires(train.x).numpy(),
                                     rules.labels.numpy(), generator.FEATURES, generator.CLASSES)
    import yaml
    rule_dicts = yaml.safe_load(rules_yaml)["rules"]
    return model, rules, reference, rule_dicts, rng


def small_window_spec(rule_dicts, **healing):
    return scenario_spec(generator.FEATURES, generator.CLASSES, rule_dicts,
                         overrides={"drift": {"windowRows": 100, "minSamples": 50}, "healing": healing})


def test_policy_score_counts_windows_under_200_rows_as_evidence(fraud):
    model, rules, reference, rule_dicts, rng = fraud
    x = generator.sample(rng, 120, generator.World(amount_unit=100.0)).x
    window = DriftSketch.empty(reference, len(rules))
    window.update(x, model.predict_proba(x).numpy(), rules.fires(x).numpy(), rules.labels.numpy())
    spec = small_window_spec(rule_dicts)
    assert not policy.score(window, reference, rules, spec["drift"]).insufficient
    # what monitor.py did before: signals.score_window ignored spec.drift.minSamples
    assert score_window(window, WindowState(reference=reference), rules).insufficient


def test_loop_declares_drift_on_100_row_windows(fraud):
    model, rules, reference, rule_dicts, rng = fraud
    spec = small_window_spec(rule_dicts)
    loop = OperatorLoop(model, rules, reference, spec, seed=0)
    assert loop.rate * loop.check_seconds == pytest.approx(100)        # one window per check
    run_stream(loop, generator.sample(rng, 1000, generator.World(amount_unit=100.0, distance_unit=1000.0)).x)
    assert loop.counts["windows"] == 10
    assert loop.first_declared_row is not None and loop.first_declared_row <= 200   # persistence 2


def test_the_heal_job_waits_for_a_full_training_window(fraud, monkeypatch):
    """As the Job does (spec.healing.waitForRowsSeconds): a heal that starts with fewer sampled rows
    since the onset than trainingWindowRows waits for them; with no wait it heals on what it has."""
    model, rules, reference, rule_dicts, rng = fraud
    seen = []
    monkeypatch.setattr(bench_loop, "heal", lambda model, x, *a, **k: seen.append(len(x)) or nothing_to_fix())
    drifted = generator.sample(np.random.default_rng(1), 3000, generator.World(amount_unit=100.0, distance_unit=1000.0))
    rows = {}
    for wait in (None, 0.0):
        seen.clear()
        spec = scenario_spec(generator.FEATURES, generator.CLASSES, rule_dicts, overrides={
            "drift": {"windowRows": 100, "minSamples": 50}, "serving": {"sampleFraction": 1.0},
            "healing": {"trainingWindowRows": 1000, "minRows": 50, "waitForRowsSeconds": 600,
                        "activeDeadlineSeconds": 900}})
        loop = OperatorLoop(model, rules, reference, spec, seed=0, traffic=Traffic(job_wait_seconds=wait))
        run_stream(loop, drifted.x)
        assert seen, loop.events[:6]
        rows[wait] = seen[0]
    assert rows[None] == 1000 and rows[0.0] < 1000, rows


def nothing_to_fix(*args, **kwargs):
    return HealResult(None, [], {"reason": "no fix needed"}, None)


def jobs_with_cooldown(fraud, monkeypatch, cooldown):
    model, rules, reference, rule_dicts, rng = fraud
    monkeypatch.setattr(bench_loop, "heal", nothing_to_fix)
    spec = small_window_spec(rule_dicts, cooldownSeconds=cooldown, maxHealsPerDay=100)
    loop = OperatorLoop(model, rules, reference, spec, seed=0, traffic=Traffic(job_wait_seconds=0.0))
    drifted = generator.sample(np.random.default_rng(1), 6000, generator.World(amount_unit=100.0, distance_unit=1000.0))
    run_stream(loop, drifted.x)          # 60 checks of 30 s
    starts = [e["t"] for e in loop.events if e["event"] == "HealStarted"]
    ends = [e["t"] for e in loop.events if e["event"] == "NothingToFix"]
    gaps = [s - e for e, s in zip(ends, starts[1:])]
    return loop, starts, gaps


def test_cooldown_counts_simulated_seconds(fraud, monkeypatch):
    short, starts_short, gaps_short = jobs_with_cooldown(fraud, monkeypatch, 60)
    long, starts_long, gaps_long = jobs_with_cooldown(fraud, monkeypatch, 300)
    assert len(gaps_short) >= 5 and len(gaps_long) >= 2
    assert all(g >= 60 for g in gaps_short) and all(g >= 300 for g in gaps_long)
    # the next Job starts at the first check after the cooldown ran out, not windows later
    assert max(gaps_short) < 60 + short.check_seconds and max(gaps_long) < 300 + long.check_seconds
    assert len(starts_short) > 2 * len(starts_long)


def test_daily_budget_caps_jobs(fraud, monkeypatch):
    model, rules, reference, rule_dicts, rng = fraud
    monkeypatch.setattr(bench_loop, "heal", nothing_to_fix)
    spec = small_window_spec(rule_dicts, cooldownSeconds=0, maxHealsPerDay=3)
    loop = OperatorLoop(model, rules, reference, spec, seed=0, traffic=Traffic(job_wait_seconds=0.0))
    run_stream(loop, generator.sample(rng, 4000, generator.World(amount_unit=100.0, distance_unit=1000.0)).x)
    assert loop.counts["jobs"] == 3


def test_harm_counts_any_metric():
    none = {"primary": 0.90, "f1": 0.60, "pr_auc": 0.70, "clean": 0.95}
    # accuracy rises, F1 falls: harmful
    assert harms({"primary": 0.95, "f1": 0.50, "pr_auc": 0.70, "clean": 0.95}, none,
                 ["primary", "f1", "pr_auc"], 0.005) == ["f1"]
    assert harms({"primary": 0.95, "f1": 0.60, "pr_auc": 0.71, "clean": 0.80}, none,
                 ["primary", "f1", "pr_auc"], 0.005) == []
    assert harms({"primary": 0.95, "f1": 0.60, "pr_auc": 0.71, "clean": 0.80}, none,
                 ["primary", "f1", "pr_auc", "clean"], 0.005) == ["clean"]
    assert harms({"primary": 0.897, "f1": None}, {"primary": 0.90, "f1": None}, ["primary", "f1"], 0.005) == []


def test_harm_keys_follow_the_declarations():
    assert harm_keys({"clean_counts": True}, positive=1) == ["primary", "f1", "pr_auc", "clean"]
    assert harm_keys({"clean_counts": False}, positive=1) == ["primary", "f1", "pr_auc"]
    assert harm_keys({"clean_counts": True}, positive=None) == ["primary", "clean"]


def test_fraud_scenarios_declare_what_the_bench_needs():
    scenarios = {s.name: s for s in generator.load_scenarios(seed=0, quick=True)}
    assert {"fraud_class_conditional", "fraud_benign_shift", "fraud_label_shift_norule",
            "fraud_units_zero_inflated"} <= set(scenarios)
    for s in scenarios.values():
        assert s.extra["metric"] in ("accuracy", "balanced_accuracy")
        assert isinstance(s.extra["clean_counts"], bool)
        assert s.train.x.shape[1] == len(s.features) == s.stream.x.shape[1] == s.clean_test.x.shape[1]
    assert not scenarios["fraud_unit_change"].extra["clean_counts"]
    assert not scenarios["fraud_units_zero_inflated"].extra["clean_counts"]
    assert scenarios["fraud_prior_shift"].extra["clean_counts"]
    assert scenarios["fraud_class_conditional"].negative_control
    # the label shift's rules say nothing for the rising class
    norule = scenarios["fraud_label_shift_norule"]
    rules = RuleSet.from_yaml(norule.rules_yaml, norule.features, norule.classes)
    assert "fraud" not in {norule.classes[i] for i in rules.labels.tolist()}
    assert np.mean(norule.stream.y) > 0.15 > np.mean(norule.train.y)
    # zero-inflated cashback next to a fee in cents
    units = scenarios["fraud_units_zero_inflated"]
    cashback, fee = units.features.index("cashback"), units.features.index("fee")
    assert 0.4 < np.mean(units.train.x[:, cashback] == 0) < 0.7
    assert np.median(units.stream.x[:, fee]) > 50 * np.median(units.train.x[:, fee])
    assert "fee" not in units.extra["log_features"]
    # class-conditional: legit amounts move, fraud's do not
    cc = scenarios["fraud_class_conditional"]
    legit_ratio = np.median(cc.stream.x[cc.stream.y == 0, 0]) / np.median(cc.train.x[cc.train.y == 0, 0])
    fraud_ratio = np.median(cc.stream.x[cc.stream.y == 1, 0]) / np.median(cc.train.x[cc.train.y == 1, 0])
    assert legit_ratio > 3 and 0.6 < fraud_ratio < 1.5
    # the same seed gives the same data; old scenarios are unchanged by the extra columns
    again = generator.scenario("fraud_unit_change", seed=0, quick=True)
    assert np.array_equal(again.stream.x, scenarios["fraud_unit_change"].stream.x)


def test_onset_moves_to_the_window_where_a_new_signal_turns_on():
    """A chance label alarm on clean traffic, then the real drift in the next window: the onset is the
    end of the window the input signal first saw, not of the alarm's (a chaos run's heal Job trained on
    rows since the alarm, a third of them clean, and missed the unit change). Once drift is declared,
    a signal joining leaves the onset alone: a Job may already train on rows since it."""
    from model_handler.drift import DriftScores

    def window(input_shift=0.0, label_shift=0.0, rule_conflict=0.0, samples=1000):
        return DriftScores(samples=samples, insufficient=samples < 200, input_shift=input_shift,
                           prediction_shift=0.0, entropy_shift=0.0, rule_conflict=rule_conflict,
                           label_shift=label_shift, input_p=1e-9, label_p=1e-9)

    drift = {"persistence": 3}
    alarm = policy.judge_window(window(label_shift=0.41), drift, None, None, "t1")
    assert alarm.onset == "t1" and not alarm.drifting
    short = policy.judge_window(window(label_shift=0.45, samples=50), drift, alarm.trigger.to_dict(), None, "t2")
    assert short.onset is None    # too few rows to say anything, let alone move the onset
    real = policy.judge_window(window(input_shift=8.0, label_shift=0.5), drift, short.trigger.to_dict(), None, "t3")
    assert real.onset == "t3" and real.trigger.consecutive == 2
    same = policy.judge_window(window(input_shift=8.0, label_shift=0.5), drift, real.trigger.to_dict(), None, "t4")
    assert same.onset is None and same.drifting
    joined = policy.judge_window(window(input_shift=8.0, label_shift=0.5, rule_conflict=0.3), drift,
                                 same.trigger.to_dict(), "t4", "t5")
    assert joined.trigger.signals == ("input", "label", "rules")
    assert joined.onset is None and joined.since == "t4"
