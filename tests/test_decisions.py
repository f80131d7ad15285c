"""The operator's decisions (shm_operator.decisions): pure functions, tested without a cluster."""
from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shm_operator import crd
from shm_operator import decisions as d

NOW = datetime(2026, 11, 22, 19, 0, 0, tzinfo=timezone.utc)
EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples/fraud/selfhealingmodel.yaml").read_text())
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


# ---- should_heal -------------------------------------------------------------------------------

READY_TO_HEAL = dict(now=NOW, drifting=True, mode="Auto", healing_job=None, phase="Drifting", candidate=None,
                     spec_problems=(), last_heal_finished=None, cooldown_seconds=1800, recent_heal_starts=(),
                     max_heals_per_day=3)


def heal_decision(**changes) -> d.Decision:
    return d.should_heal(**{**READY_TO_HEAL, **changes})


def test_heals_when_drift_is_declared_and_nothing_stands_in_the_way():
    decision = heal_decision()
    assert decision.act and decision.code == "HealNeeded" and "heal 1/3" in decision.reason


@pytest.mark.parametrize("changes, code, reason", [
    ({"healing_job": "fraud-heal-4"}, "HealInProgress", "already healing (job fraud-heal-4)"),
    ({"drifting": False}, "NoDrift", "no drift declared"),
    ({"mode": "Off"}, "HealingOff", "mode Off"),
    ({"mode": crd.HealingMode.OFF}, "HealingOff", "mode Off"),
    ({"spec_problems": ["spec.rules[0]: bad", "spec.drift.inputOff: high"]}, "InvalidSpec",
     "spec is invalid: spec.rules[0]: bad (and 1 more)"),
    ({"phase": "RollingOut"}, "RolloutInProgress", "a rollout is in progress (phase RollingOut)"),
    ({"phase": crd.Phase.PROMOTING}, "RolloutInProgress", "a rollout is in progress (phase Promoting)"),
    ({"mode": "Manual", "candidate": "v3"}, "AwaitingApproval", "candidate v3 awaits approval"),
], ids=["job", "no-drift", "off", "off-enum", "invalid", "rollout", "promoting", "candidate"])
def test_reasons_not_to_heal(changes, code, reason):
    decision = heal_decision(**changes)
    assert (decision.act, decision.code, decision.reason) == (False, code, reason)


def test_a_phase_from_a_newer_operator_is_not_a_rollout():
    assert heal_decision(phase="Shadowing").act


def test_a_running_job_is_named_even_when_the_drift_has_cleared():
    assert heal_decision(healing_job="fraud-heal-1", drifting=False, mode="Off").code == "HealInProgress"


def test_cooldown_counts_down_from_the_last_heal():
    decision = heal_decision(last_heal_finished=ago(1800 - 212))
    assert (decision.act, decision.reason, decision.retry_after) == (False, "cooldown: 212s left", 212)
    assert heal_decision(last_heal_finished=ago(1800)).act
    assert heal_decision(last_heal_finished="2026-11-22T18:59:00Z").reason == "cooldown: 1740s left"


def test_daily_budget_is_a_sliding_24_hours():
    starts = [ago(23 * 3600), ago(5 * 3600), ago(3 * 3600)]
    spent = heal_decision(recent_heal_starts=starts)
    assert (spent.act, spent.code, spent.reason) == (False, "DailyBudgetSpent", "daily budget spent (3/3)")
    assert spent.retry_after == 3600          # the oldest start leaves the window in an hour
    assert heal_decision(recent_heal_starts=[ago(25 * 3600), *starts[1:]]).act
    assert heal_decision(recent_heal_starts=starts, max_heals_per_day=4).reason.endswith("heal 4/4 of the last 24h")


def test_budget_retry_after_counts_from_the_start_that_frees_a_slot():
    starts = [ago(20 * 3600), ago(10 * 3600), ago(2 * 3600), ago(3600)]   # 4 starts, budget 2
    # the budget was lowered to 2: a slot frees once only one start is left, when the -2h one leaves
    assert heal_decision(recent_heal_starts=starts, max_heals_per_day=2).retry_after == 22 * 3600


def test_times_without_a_zone_are_refused():
    with pytest.raises(ValueError, match="no timezone"):
        heal_decision(last_heal_finished=datetime(2026, 11, 22, 18, 0))


def test_unknown_mode_is_an_error_not_a_silent_heal():
    with pytest.raises(ValueError, match="Sometimes"):
        heal_decision(mode="Sometimes")


def test_recent_heals_prunes_and_sorts():
    assert d.recent_heals(["2026-11-22T10:00:00Z", ago(90000), ago(60)], NOW) == [
        datetime(2026, 11, 22, 10, tzinfo=timezone.utc), ago(60)]


# ---- versions and Job names --------------------------------------------------------------------

# next_version and version_number live in model_handler.registry (tests/test_registry.py): one rule
# for the registry and the operator.

def test_heal_job_target_reads_the_jobs_arguments():
    from shm_operator.children import heal_job
    spec = crd.SelfHealingModelSpec.model_validate(EXAMPLE["spec"]).model_dump(mode="json")
    job = heal_job("fraud", "ns", spec, job_name="fraud-heal-3", parent="v5", version="v6", config={}, since="2026-11-22T18:00:00Z")
    assert d.heal_job_target(job) == ("v5", "v6")
    job["spec"]["template"]["spec"]["containers"][0]["args"] = ["-m", "model_handler.heal", "--version=v9"]
    assert d.heal_job_target(job) == ("base", "v9")     # no --parent: the heal.py default
    for args in ([], ["--version"], ["--parent", "v1"]):
        job["spec"]["template"]["spec"]["containers"][0]["args"] = args
        assert d.heal_job_target(job) is None
    assert d.heal_job_target({"kind": "Job", "metadata": {"name": "x"}}) is None


def test_heal_job_name_is_plain_when_it_fits():
    assert d.heal_job_name("fraud", 3) == "fraud-heal-3"


@pytest.mark.parametrize("model", ["a" * 253, "fraud.detector.eu-west-1", "x" * 57, "-.-"])
def test_heal_job_name_is_a_dns_label_for_any_resource_name(model):
    name = d.heal_job_name(model, 123)
    assert DNS_LABEL.fullmatch(name) and len(name) <= 63 and name.endswith("-heal-123")
    assert d.heal_job_name(model, 123) == name


def test_long_names_sharing_a_prefix_get_different_jobs():
    assert d.heal_job_name("m" * 70 + "a", 1) != d.heal_job_name("m" * 70 + "b", 1)
    assert d.heal_job_name("fraud.v2", 1) != d.heal_job_name("fraud-v2", 1)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_heal_job_name_needs_a_positive_integer(n):
    with pytest.raises(ValueError, match="heal number"):
        d.heal_job_name("fraud", n)


# ---- drift -------------------------------------------------------------------------------------

@pytest.mark.parametrize("signals, reason", [
    (["input"], "InputShift"), (("label",), "LabelShift"), (["rules"], "RuleConflict"),
    (["input", "rules"], "SeveralSignals"), (["label", "input", "rules"], "SeveralSignals"),
])
def test_drift_reason_names_the_signal(signals, reason):
    assert d.drift_reason(signals) == reason
    assert re.fullmatch(crd.CONDITION_REASON, reason)


@pytest.mark.parametrize("signals", [[], ["inputs"]])
def test_drift_reason_refuses_what_is_no_signal(signals):
    with pytest.raises(ValueError):
        d.drift_reason(signals)


# ---- the Job's termination message -------------------------------------------------------------
# The shapes `python -m model_handler.heal` writes (see model_handler/heal.py).

PROMOTABLE = {"version": "v2", "parent": "v1", "rows": 3000, "skippedShards": 0, "steps": ["recalibrate", "adapter"],
              "promotable": True, "labelsUsed": 0, "reason": "recalibrate+adapter: passed all 7 checks",
              "failed": [], "state": "candidate", "sha256": "ab" * 32}
REFUSED = {**PROMOTABLE, "promotable": False, "state": "rejected", "failed": ["class_rates", "disagreement"],
           "reason": "adapter: refused: class_rates (4.1 vs limit 3)"}
NOTHING = {"version": "v2", "parent": "v1", "state": "none", "promotable": False, "rows": 12, "skippedShards": 0,
           "reason": "not enough sampled traffic: 12 rows, need 200"}
CRASHED = {"version": "v2", "parent": "v1", "error": "RegistryError: adapter v1 not found"}


def test_parse_a_promotable_result():
    result = d.parse_job_result(json.dumps(PROMOTABLE, separators=(",", ":")))
    assert result == d.JobResult(version="v2", parent="v1", state="candidate", promotable=True,
                                 reason=PROMOTABLE["reason"], steps=("recalibrate", "adapter"), failed_checks=(),
                                 rows=3000, sha256="ab" * 32, error=None, verdict="promote")


def test_parse_refused_nothing_and_crashed_results():
    refused = d.parse_job_result(json.dumps(REFUSED))
    assert not refused.promotable and refused.failed_checks == ("class_rates", "disagreement") and not refused.error
    nothing = d.parse_job_result(json.dumps(NOTHING))
    assert (nothing.state, nothing.promotable, nothing.error) == ("none", False, None)
    crashed = d.parse_job_result(json.dumps(CRASHED))
    assert crashed.error == "heal Job failed: RegistryError: adapter v1 not found" and crashed.version == "v2"


def test_passed_is_read_where_promotable_is_absent_and_unknown_keys_are_ignored():
    message = {"version": "v5", "passed": True, "steps": ["prior"], "futureField": {"x": 1}}
    assert d.parse_job_result(json.dumps(message)).promotable


@pytest.mark.parametrize("message, error", [
    ("", "empty termination message"),
    ("  \n", "empty termination message"),
    (None, "empty termination message"),
    ('{"version": "v2", "promotable": tr', "not JSON"),                 # cut off
    ("[1, 2]", "must be a JSON object, got list"),
    ('"v2"', "must be a JSON object, got str"),
    ('{"version": "v2", "promotable": "yes"}', "promotable: Input should be a valid boolean"),
    ('{"version": "v2", "promotable": true, "steps": "adapter"}', "steps: Input should be a valid list"),
    ('{"version": "v2"}', "neither promotable nor error"),
    (json.dumps({**PROMOTABLE, "reason": "x" * 5000}), "over the 4096"),
])
def test_unusable_messages_become_errors(message, error):
    result = d.parse_job_result(message)
    assert error in result.error and not result.promotable


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["version", "promotable", "passed", "steps", "failed", "error", "reason", "rows", "x",
                         "verdict", "evidence", "estimate"]),
        children, max_size=6),
    max_leaves=20).map(json.dumps)))
def test_parse_job_result_never_raises(message):
    result = d.parse_job_result(message)
    assert isinstance(result, d.JobResult)
    assert not (result.promotable and result.error)


# ---- promotion ---------------------------------------------------------------------------------

def test_promotion_follows_the_mode_for_a_passing_candidate():
    result = d.parse_job_result(json.dumps(PROMOTABLE))
    assert d.promotion_action("Auto", result) == ("promote", f"v2 passed the gate: {PROMOTABLE['reason']}")
    action, reason = d.promotion_action("Manual", result)
    assert action == "await-approval" and reason.startswith("Manual mode") and "spec.adapter.version: v2" in reason
    action, reason = d.promotion_action(crd.HealingMode.OFF, result)
    assert action == "await-approval" and "turned Off" in reason


@pytest.mark.parametrize("message, reason", [
    (REFUSED, REFUSED["reason"]),
    ({**REFUSED, "reason": ""}, "gate failed: class_rates, disagreement"),
    (CRASHED, "heal Job failed: RegistryError: adapter v1 not found"),
])
@pytest.mark.parametrize("mode", ["Auto", "Manual"])
def test_anything_but_a_passing_candidate_is_rejected(message, reason, mode):
    assert d.promotion_action(mode, d.parse_job_result(json.dumps(message))) == ("reject", reason)


@pytest.mark.parametrize("mode", ["Auto", "Manual"])
def test_a_heal_with_nothing_to_fix_ends_as_nothing_not_as_a_rejection(mode):
    """An older Job's `state: none` (no verdict) and a newer Job's verdict `nothing` end alike."""
    assert d.parse_job_result(json.dumps(NOTHING)).verdict == "nothing"
    assert d.promotion_action(mode, d.parse_job_result(json.dumps(NOTHING))) == ("nothing", NOTHING["reason"])
    newer = {**NOTHING, "verdict": "nothing", "reason": "no signal explained by a fixable shift"}
    assert d.promotion_action(mode, d.parse_job_result(json.dumps(newer))) == ("nothing", newer["reason"])


ESTIMATE = {"estimator": "rule-agreement", "before": 0.41, "after": 0.93, "note": ""}
APPROVE = {**PROMOTABLE, "verdict": "approve", "evidence": [],
           "reason": "the prior correction passed the safety checks; no trusted rule fires on the moved classes",
           "estimate": {"estimator": "rule-agreement", "before": 0.8, "after": None,
                        "note": "no trusted rule covers the candidate's changes"}}


def test_verdicts_of_a_newer_job_are_read_with_their_evidence_and_estimate():
    promote = d.parse_job_result(json.dumps({**PROMOTABLE, "verdict": "promote", "estimate": ESTIMATE,
                                             "evidence": ["holdout rule conflict 0.31 -> 0.02"]}))
    assert (promote.verdict, promote.evidence, promote.estimate) == (
        "promote", ("holdout rule conflict 0.31 -> 0.02",), ESTIMATE)
    approve = d.parse_job_result(json.dumps(APPROVE))
    assert approve.verdict == "approve" and approve.promotable and approve.estimate["after"] is None
    assert d.parse_job_result(json.dumps({**REFUSED, "verdict": "reject"})).verdict == "reject"
    # older messages: promotable -> promote, a rejected state -> reject
    assert d.parse_job_result(json.dumps(PROMOTABLE)).verdict == "promote"
    assert d.parse_job_result(json.dumps(REFUSED)).verdict == "reject"
    assert d.parse_job_result(json.dumps(CRASHED)).verdict is None
    # a verdict alone is a result
    alone = d.parse_job_result(json.dumps({"version": "v3", "verdict": "approve"}))
    assert alone.promotable and not alone.error
    # the Job writes promotable: false with approve, for older operators; the verdict decides here
    held = d.parse_job_result(json.dumps({**APPROVE, "promotable": False}))
    assert held.promotable and d.promotion_action("Auto", held).action == "await-approval"
    assert not d.parse_job_result(json.dumps({**PROMOTABLE, "verdict": "reject"})).promotable


def test_an_unknown_verdict_is_an_error_not_a_promotion():
    result = d.parse_job_result(json.dumps({**PROMOTABLE, "verdict": "ship-it"}))
    assert "verdict" in result.error and not result.promotable
    assert d.promotion_action("Auto", result).action == "reject"


@pytest.mark.parametrize("estimate, expected", [
    ({"estimator": "em", "before": 0.5, "after": 1}, {"estimator": "em", "before": 0.5, "after": 1.0, "note": ""}),
    ({"estimator": "em", "before": 1.7, "after": True, "note": "low rows"},
     {"estimator": "em", "before": None, "after": None,
      "note": "low rows; before 1.7 is not an accuracy in [0, 1]; after True is not an accuracy in [0, 1]"}),
    ([0.5], {"estimator": "", "before": None, "after": None, "note": "unreadable estimate: a list, not an object"}),
    (None, None),
])
def test_a_malformed_estimate_is_unknown_with_a_note_never_an_error(estimate, expected):
    result = d.parse_job_result(json.dumps({**PROMOTABLE, "verdict": "promote", "estimate": estimate}))
    assert result.estimate == expected and not result.error and result.verdict == "promote"
    nan = d.parse_job_result('{"version": "v2", "verdict": "promote", "estimate": {"before": NaN}}')
    assert nan.estimate["before"] is None and "nan" in nan.estimate["note"]


@pytest.mark.parametrize("mode", ["Auto", "Manual", "Off"])
def test_approve_always_waits_for_a_person_and_says_why(mode):
    action, reason = d.promotion_action(mode, d.parse_job_result(json.dumps(APPROVE)))
    assert action == "await-approval"
    assert "no independent evidence supports the fix" in reason and APPROVE["reason"] in reason
    assert "spec.adapter.version: v2" in reason


def test_promote_follows_the_mode_and_reject_rejects():
    promote = d.parse_job_result(json.dumps({**PROMOTABLE, "verdict": "promote"}))
    assert d.promotion_action("Auto", promote) == ("promote", f"v2 passed the gate: {PROMOTABLE['reason']}")
    assert d.promotion_action("Manual", promote).action == "await-approval"
    rejected = d.parse_job_result(json.dumps({**PROMOTABLE, "verdict": "reject", "reason": "no evidence"}))
    assert d.promotion_action("Auto", rejected) == ("reject", "no evidence")


def test_approve_command_is_a_merge_patch_of_the_version():
    command = d.approve_command("fraud", "prod", "v3")
    assert command.startswith("kubectl patch shm fraud -n prod --type merge -p ")
    assert json.loads(command.split(" -p ", 1)[1].strip("'")) == {"spec": {"adapter": {"version": "v3"}}}


def test_unreadable_result_is_rejected_with_the_parse_error():
    action, reason = d.promotion_action("Auto", d.parse_job_result("oops"))
    assert action == "reject" and "not JSON" in reason


def test_performance_comes_from_a_finished_heals_estimate():
    estimate = {"estimator": "em", "before": 0.41, "after": 0.934, "note": ""}
    last = {"job": "fraud-heal-4", "version": "v3", "result": "Promoted", "estimate": estimate}
    assert d.performance(last, NOW) == {"estimator": "em", "accuracy": 0.934, "display": "0.93",
                                        "basis": "candidate v3 after heal fraud-heal-4",
                                        "updated": "2026-11-22T19:00:00Z"}
    for result in ("AwaitingApproval", "Rejected", "NothingToFix", "Failed"):
        held = d.performance({**last, "result": result}, NOW)
        assert (held["accuracy"], held["basis"]) == (0.41, "served before heal fraud-heal-4")
    assert d.performance({**last, "estimate": {**estimate, "after": None}}, NOW)["display"] == "unknown"
    assert d.performance({**last, "result": "Running"}, NOW) is None
    assert d.performance({**last, "estimate": None}, NOW) is None


# ---- rollback ----------------------------------------------------------------------------------

BEFORE = d.RolloutSignals(samples=1000, rule_conflict=0.03, class_rates={"legit": 0.97, "fraud": 0.03})
LIMITS = d.RollbackLimits(max_conflict_increase=0.02, max_class_rate_ratio=2.0, class_rate_tolerance=0.01,
                          min_samples=200, watch_seconds=600, automatic=True)


def live(samples=500, conflict=0.03, fraud=0.03) -> d.RolloutSignals:
    return d.RolloutSignals(samples, conflict, {"legit": 1 - fraud, "fraud": fraud})


def test_rule_conflict_rise_rolls_back():
    decision = d.rollback_check(BEFORE, live(conflict=0.09), LIMITS, elapsed_seconds=120)
    assert decision.act and decision.code == "HarmDetected"
    assert decision.reason == "rule conflict rose 0.030 -> 0.090 (+0.060 > 0.02)"


def test_class_rate_swing_rolls_back_both_ways():
    up = d.rollback_check(BEFORE, live(fraud=0.10), LIMITS)
    assert up.act and "class fraud rate 0.030 -> 0.100" in up.reason and "class legit" not in up.reason
    down = d.rollback_check(BEFORE, live(fraud=0.0), LIMITS)
    assert down.act and "class fraud rate 0.030 -> 0.000" in down.reason


def test_small_moves_are_not_harm():
    assert not d.rollback_check(BEFORE, live(conflict=0.045, fraud=0.04), LIMITS).act
    rare = d.RolloutSignals(1000, 0.0, {"legit": 0.998, "fraud": 0.002})
    tripled = d.RolloutSignals(1000, 0.0, {"legit": 0.994, "fraud": 0.006})   # x3, but 0.4 points: noise
    assert d.rollback_check(rare, tripled, LIMITS).code == "NoHarm"


def test_too_few_rows_means_wait_never_rollback():
    decision = d.rollback_check(BEFORE, live(samples=150, conflict=0.5, fraud=0.5), LIMITS)
    assert (decision.act, decision.code) == (False, "InsufficientSamples")
    assert decision.reason == "waiting for samples (150/200 since the rollout)"
    no_baseline = d.rollback_check(d.RolloutSignals(10, 0.0, {}), live(conflict=0.5), LIMITS)
    assert (no_baseline.act, no_baseline.code) == (False, "NoBaseline")


def test_harm_without_automatic_rollback_is_reported_not_acted_on():
    manual = d.RollbackLimits(**{**LIMITS.__dict__, "automatic": False})
    decision = d.rollback_check(BEFORE, live(conflict=0.09), manual)
    assert (decision.act, decision.code) == (False, "HarmNotRolledBack") and "rule conflict rose" in decision.reason


def test_watch_completes_without_harm():
    assert d.rollback_check(BEFORE, live(), LIMITS, elapsed_seconds=599).code == "NoHarm"
    done = d.rollback_check(BEFORE, live(), LIMITS, elapsed_seconds=600)
    assert (done.act, done.code) == (False, "WatchComplete")


def test_limits_from_the_spec():
    spec = crd.SelfHealingModel.model_validate(EXAMPLE).spec
    limits = d.RollbackLimits.from_spec(spec.promotion.rollback)
    assert limits == d.RollbackLimits(0.02, 2.0, 0.01, 200, 600, True)


# ---- spec semantics ----------------------------------------------------------------------------

def spec_with(**changes) -> dict:
    spec = copy.deepcopy(EXAMPLE["spec"])
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return spec


def test_the_example_spec_has_no_problems():
    assert d.validate_spec_semantics(EXAMPLE["spec"]) == []
    assert d.validate_spec_semantics(crd.SelfHealingModel.model_validate(EXAMPLE).spec) == []


def test_every_broken_rule_is_reported_with_its_name_and_what_is_wrong():
    problems = d.validate_spec_semantics(spec_with(rules__0__when="amout > 1500", rules__3__label="chargeback",
                                                   rules__4__when="card_present == 1 and"))
    assert len(problems) == 3, problems
    assert problems[0].startswith("spec.rules[0]: rule 'big_new_merchant'") and "amout" in problems[0]
    assert problems[1].startswith("spec.rules[3]: rule 'card_testing'") and "'chargeback'" in problems[1]
    assert problems[2].startswith("spec.rules[4]: rule 'regular_in_store'")


def test_a_numeric_rule_condition_is_refused():
    (problem,) = d.validate_spec_semantics(spec_with(rules__0__when="amount * 2"))
    assert "must be a condition" in problem


@pytest.mark.parametrize("changes, expected", [
    ({"drift__inputOff": 0.2}, "spec.drift.inputOff: 0.2 is above inputOn 0.1: drift could never clear"),
    ({"drift__conflictOff": 0.06}, "spec.drift.conflictOff: 0.06 is above conflictOn 0.05"),
    ({"drift__labelShiftOff": 0.5}, "spec.drift.labelShiftOff: 0.5 is above labelShiftOn 0.4: drift could never clear"),
    ({"drift__labelShiftOn": 0.1}, "spec.drift.labelShiftOff: 0.2 is above labelShiftOn 0.1"),
    ({"drift__minSamples": 600}, "spec.drift.minSamples: 600 is above windowRows 500"),
    ({"healing__minRows": 4000}, "spec.healing.minRows: 4000 is above trainingWindowRows 3000"),
    ({"healing__waitForRowsSeconds": 600}, "spec.healing.waitForRowsSeconds: 600 is not below activeDeadlineSeconds"),
    ({"promotion__rollback__watchSeconds": 20}, "spec.promotion.rollback.watchSeconds: 20s is shorter than"),
    ({"features__2": "not"}, "spec.features[2]: 'not' is a reserved word of the rule language"),
    ({"resources__requests__memory": "1 GB"}, "spec.resources.requests.memory: '1 GB' is not a Kubernetes quantity"),
    ({"healing__resources__limits": {"cpu": "two"}}, "spec.healing.resources.limits.cpu: 'two'"),
])
def test_what_the_schema_cannot_say(changes, expected):
    problems = d.validate_spec_semantics(spec_with(**changes))
    assert any(p.startswith(expected) for p in problems), problems


def test_watch_zero_means_no_watch_and_is_fine():
    assert d.validate_spec_semantics(spec_with(promotion__rollback__watchSeconds=0)) == []


def test_schema_errors_come_back_the_same_way():
    problems = d.validate_spec_semantics(spec_with(replicas=0, healing__mode="Sometimes", drift__windowRow=5))
    assert [p.split(":")[0] for p in problems] == ["spec.replicas", "spec.drift.windowRow", "spec.healing.mode"]


# ---- conditions and history --------------------------------------------------------------------

def test_condition_is_a_valid_crd_condition():
    made = d.condition("Ready", True, "PodsReady", "2/2 pods serve v3", NOW, generation=4)
    assert made == {"type": "Ready", "status": "True", "reason": "PodsReady", "message": "2/2 pods serve v3",
                    "lastTransitionTime": "2026-11-22T19:00:00Z", "observedGeneration": 4}
    assert crd.Condition.model_validate(made).status is crd.ConditionStatus.TRUE
    assert "observedGeneration" not in d.condition("Healing", "Unknown", "Starting", "", NOW)


@pytest.mark.parametrize("args, error", [
    (("Ready", "Yes", "PodsReady"), "True, False or Unknown"),
    (("Ready", True, "pods ready"), "CamelCase"),
    (("ready", True, "PodsReady"), "condition type"),
])
def test_condition_refuses_what_the_crd_would_refuse(args, error):
    with pytest.raises(ValueError, match=error):
        d.condition(*args, "", NOW)


def test_condition_message_is_cut_to_the_kubernetes_limit():
    made = d.condition("Degraded", False, "Healthy", "x" * 40000, NOW)
    assert len(made["message"]) == 32768 and made["message"].endswith("...")


def test_set_condition_keeps_the_transition_time_while_the_status_holds():
    first = d.condition("DriftDetected", True, "BothSignalsOn", "input 0.3", ago(600))
    ready = d.condition("Ready", True, "PodsReady", "", ago(900))
    conditions = [ready, first]
    later = d.condition("DriftDetected", True, "BothSignalsOn", "input 0.5", NOW)
    updated = d.set_condition(conditions, later)
    assert updated[0] == ready and updated[1]["message"] == "input 0.5"
    assert updated[1]["lastTransitionTime"] == "2026-11-22T18:50:00Z"
    cleared = d.set_condition(updated, d.condition("DriftDetected", False, "SignalsOff", "", NOW))
    assert cleared[1]["lastTransitionTime"] == "2026-11-22T19:00:00Z" and cleared[1]["status"] == "False"
    assert conditions == [ready, first]                                    # the input is not changed


def test_set_condition_appends_a_new_type():
    added = d.set_condition([], d.condition("RolledBack", True, "HarmDetected", "conflict rose", NOW))
    assert [c["type"] for c in added] == ["RolledBack"]


def test_history_keeps_the_newest_entries_in_crd_shape():
    history = []
    for n in range(1, 26):
        history = d.append_history(history, version=f"v{n}", from_version=f"v{n - 1}" if n > 1 else "base", now=NOW, reason="heal", by="operator")
    assert len(history) == crd.MAX_HISTORY and history[0]["version"] == "v6" and history[-1]["version"] == "v25"
    status = crd.SelfHealingModelStatus.model_validate({"history": history})
    assert status.history[-1].from_version == "v24"


def test_format_and_parse_time():
    assert d.format_time(datetime(2026, 1, 2, 4, 5, 6, 789, tzinfo=timezone(timedelta(hours=2)))) == \
        "2026-01-02T02:05:06Z"
    assert d.parse_time("2026-01-02T02:05:06Z") == datetime(2026, 1, 2, 2, 5, 6, tzinfo=timezone.utc)
    assert d.parse_time(None) is None and d.parse_time("") is None
