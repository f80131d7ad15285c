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
    registry = AdapterRegistry(storage.as_uri(), "ns", "fraud")
    data, meta = registry.get("v1")
    assert meta.state == "candidate" and meta.creator == "fraud-heal-v1" and meta.parent is None
    assert meta.sha256 == result["sha256"] and meta.training_window.rows == 3000
    assert meta.gate["report"]["passed"] is True

    # A second heal starts from v1 (its parent) and finds nothing left to fix.
    code, result, _ = run_job(model_dir, storage, tmp_path, version="v2", parent="v1")
    assert code == 0 and result["state"] == "none" and not result["promotable"], result


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
