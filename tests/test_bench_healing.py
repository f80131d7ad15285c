"""The healing benchmark runs end to end and writes the documented JSON shape."""
import json
import subprocess
import sys


def test_quick_benchmark_on_two_scenarios(tmp_path):
    out = tmp_path / "healing.json"
    subprocess.run([sys.executable, "-m", "bench.healing", "--quick", "--scenario", "fraud_unit_change",
                    "--scenario", "fraud_stale_rule", "--json", str(out)], check=True, timeout=300,
                   capture_output=True)
    result = json.loads(out.read_text())
    collapse = result["scenarios"]["fraud_unit_change"]["methods"]
    assert set(collapse) == {"none", "oracle", "true_prior", "tent", "norm_stats", "em_prior", "em_bcts", "bbse",
                             "selfheal"}
    for method in collapse.values():
        assert {"accuracy", "primary", "f1", "pr_auc", "clean", "labels_used", "gap_closed", "harmful_promotions",
                "promotions"} <= set(method)
    healed = collapse["selfheal"]
    assert {"jobs", "approvals_pending", "nothing_to_fix", "rejected", "rollbacks"} <= set(healed)
    assert healed["jobs"] >= healed["promotions"] >= 1
    # em_bcts and bbse use the backbone's own calibration split (source labels, as every method's
    # training does): no label of the drifted traffic
    assert collapse["em_bcts"]["labels_used"] == 0 and collapse["bbse"]["labels_used"] == 0
    # the label-shift ceiling is told the stream's true prior: labels, counted as such; a unit
    # change moves no prior, so it cannot close the collapse
    assert collapse["true_prior"]["labels_used"] > 0 and collapse["true_prior"]["accuracy"] < 0.5
    scenario = result["scenarios"]["fraud_unit_change"]
    assert scenario["clean_counts"] is False and scenario["harm_keys"] == ["primary", "f1", "pr_auc"]
    assert scenario["detection"]["declared_runs"] == 1
    assert scenario["detection"]["mean_delay_rows"] <= 2 * scenario["detection"]["window_rows"]
    assert scenario["stationary"]["windows"] > 0 and scenario["stationary"]["promotions"] == 0
    # the collapse target: unhealed collapses, oracle >= 0.90, selfheal >= 0.85 with 0 labels
    assert collapse["none"]["accuracy"] < 0.5
    assert collapse["oracle"]["accuracy"] >= 0.90
    assert collapse["selfheal"]["accuracy"] >= 0.85 and collapse["selfheal"]["labels_used"] == 0
    assert collapse["selfheal"]["f1"] > collapse["none"]["f1"]
    assert collapse["selfheal"]["pr_auc"] > collapse["none"]["pr_auc"]
    control = result["scenarios"]["fraud_stale_rule"]
    assert control["negative_control"] is True
    assert control["methods"]["selfheal"]["harmful_promotions"] == 0
    assert control["clean_counts"] is True and "clean" in control["harm_keys"]
    # the gate probe heals whatever the trigger said: on the collapse it finds the recalibration
    probe = result["scenarios"]["fraud_unit_change"]["gate_probe"]
    assert probe["runs"] == 1 and probe["recalibrated"] == 1
