"""The healing Job entrypoint, run as the real command a Kubernetes Job runs, on real files."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from examples.fraud.generator import World, sample
from examples.fraud.train import build
from model_handler.registry import AdapterRegistry
from model_handler.traffic import TrafficStore


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fraud-model")
    build(out, rows=16000, seed=3)
    return out


def run_job(model_dir, storage, tmp_path, version="v1", parent="base", config=None, wait=0.0):
    log = tmp_path / f"termination-{version}"
    args = [sys.executable, "-m", "model_handler.heal", "--storage-uri", storage.as_uri(), "--namespace", "ns",
            "--model", "fraud", "--model-dir", str(model_dir), "--parent", parent, "--version", version,
            "--job-name", f"fraud-heal-{version}", "--termination-log", str(log), "--wait-for-rows", str(wait)]
    if config is not None:
        path = tmp_path / f"config-{version}.json"
        path.write_text(json.dumps(config))
        args += ["--config", str(path)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    return proc.returncode, json.loads(log.read_text()), proc


def write_traffic(storage, world, rows=3000, seed=0):
    storage.mkdir(exist_ok=True)  # a missing local root is an unmounted volume, not an empty store
    data = sample(np.random.default_rng(seed), rows, world)
    TrafficStore(storage.as_uri(), "ns", "fraud", writer_id="pod-a").write_shard(data.x, np.zeros((rows, 2)))


def test_job_heals_a_unit_change_and_registers_a_candidate(model_dir, tmp_path):
    storage = tmp_path / "store"
    write_traffic(storage, World(amount_unit=100.0, distance_unit=1000.0))
    code, result, proc = run_job(model_dir, storage, tmp_path)
    assert code == 0, proc.stderr
    assert result["state"] == "candidate" and result["promotable"], result
    assert "recalibrate" in result["steps"] and result["labelsUsed"] == 0
    assert result["verdict"] == "promote" and result["evidence"], result
    assert set(result["estimate"]) == {"estimator", "before", "after", "note"} and result["estimate"]["estimator"]
    registry = AdapterRegistry(storage.as_uri(), "ns", "fraud")
    data, meta = registry.get("v1")
    assert meta.state == "candidate" and meta.creator == "fraud-heal-v1" and meta.parent is None
    assert meta.sha256 == result["sha256"] and meta.training_window.rows == 3000
    assert meta.gate["report"]["passed"] is True

    # A second heal starts from v1 (its parent) and finds nothing left to fix.
    code, result, _ = run_job(model_dir, storage, tmp_path, version="v2", parent="v1")
    assert code == 0 and result["state"] == "none" and not result["promotable"], result
    assert result["verdict"] == "nothing" and "v2" not in AdapterRegistry(storage.as_uri(), "ns", "fraud").versions()


def test_job_reports_too_little_traffic_without_failing(model_dir, tmp_path):
    storage = tmp_path / "store"
    write_traffic(storage, World(), rows=50)
    began = time.monotonic()
    code, result, _ = run_job(model_dir, storage, tmp_path, wait=3)
    assert time.monotonic() - began >= 3  # it waited for more traffic before giving up
    assert code == 0 and result["state"] == "none"
    assert "not enough sampled traffic: 50 rows" in result["reason"]


def test_job_errors_are_reported_in_the_termination_log(model_dir, tmp_path):
    storage = tmp_path / "store"
    write_traffic(storage, World())
    code, result, _ = run_job(model_dir, storage, tmp_path, parent="v9")
    assert code == 1 and "v9" in result["error"]
    code, result, _ = run_job(model_dir, storage, tmp_path, config={"healing": {"ruleWieght": 2}})
    assert code == 1 and "ruleWieght" in result["error"]
    code, result, _ = run_job(model_dir, storage, tmp_path,
                              config={"rules": [{"name": "bad", "when": "amount >", "label": "fraud"}]})
    assert code == 1 and "bad" in result["error"]


def test_job_refuses_a_corrupt_parent_adapter(model_dir, tmp_path):
    storage = tmp_path / "store"
    write_traffic(storage, World(amount_unit=100.0, distance_unit=1000.0))
    assert run_job(model_dir, storage, tmp_path)[0] == 0
    adapter = next(storage.rglob("v1/adapter.safetensors"))
    raw = bytearray(adapter.read_bytes())
    raw[-1] ^= 0xFF
    adapter.write_bytes(bytes(raw))
    code, result, _ = run_job(model_dir, storage, tmp_path, version="v2", parent="v1")
    assert code == 1 and "v1" in result["error"] and "sha256" in result["error"].lower()


# ---- the result JSON: verdicts, evidence and the estimate, under 4 KiB ---------------------------
# Fakes of healing.HealResult, before and after it had verdicts (heal.py reads both).

from types import SimpleNamespace  # noqa: E402

from model_handler import heal as heal_job  # noqa: E402
from shm_operator.job_result import TERMINATION_MESSAGE_LIMIT, parse_job_result  # noqa: E402


def old_result(promotable=True, candidate=object()):
    return SimpleNamespace(candidate=candidate, promotable=promotable, steps=["prior"], reason="ok")


def test_a_result_without_verdicts_gets_one_from_promotable():
    assert heal_job.verdict_of(old_result(True)) == "promote"
    assert heal_job.verdict_of(old_result(False)) == "reject"
    assert heal_job.verdict_of(old_result(False, candidate=None)) == "nothing"
    assert heal_job.estimate_of(old_result())["before"] is None
    empty = SimpleNamespace(**vars(old_result()), estimate={})   # HealResult's default: no estimate
    assert heal_job.estimate_of(empty)["note"] == "this heal gives no accuracy estimate"


def test_a_result_with_a_verdict_keeps_it_and_its_estimate():
    result = SimpleNamespace(**vars(old_result(True)), verdict="approve", evidence=[],
                             estimate={"estimator": "rule-agreement", "before": 0.6123456, "after": float("nan"),
                                       "note": "too few rule firings to estimate the candidate"})
    assert heal_job.verdict_of(result) == "approve"
    assert heal_job.estimate_of(result) == {"estimator": "rule-agreement", "before": 0.6123, "after": None,
                                            "note": "too few rule firings to estimate the candidate"}
    with pytest.raises(ValueError, match="maybe"):
        heal_job.verdict_of(SimpleNamespace(**vars(old_result()), verdict="maybe"))


def test_long_evidence_is_trimmed_first_and_the_operator_reads_the_result(tmp_path, capsys):
    evidence = [f"held-out check {i}: rule conflict of the moved rows fell from 0.{i:02d} to 0.01 " + "x" * 150
                for i in range(60)]
    result = {"version": "v3", "parent": "v2", "state": "candidate", "promotable": False, "verdict": "approve",
              "evidence": evidence, "reason": "prior correction: passed the safety checks " * 10,
              "estimate": {"estimator": "em", "before": 0.7, "after": None, "note": "n" * 800},
              "steps": ["prior"], "failed": [], "sha256": "ab" * 32, "rows": 3000}
    log = tmp_path / "termination"
    heal_job.write_termination(str(log), result)
    text = log.read_text()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = parse_job_result(text)
    assert not parsed.error and parsed.verdict == "approve" and parsed.promotable and parsed.version == "v3"
    assert parsed.reason == result["reason"], "the reason is trimmed only after the evidence"
    assert parsed.evidence[0] == evidence[0][:197] + "..." and parsed.evidence[-1].endswith("more not shown")
    assert parsed.estimate["before"] == 0.7
    capsys.readouterr()
