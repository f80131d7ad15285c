"""The controller carries no ML runtime: importing the operator (and using what it uses of the rule
language and the adapter checks) never imports torch, and the numpy evaluation of rules it relies on
is the torch evaluation the pods and the heal Job run, bit for bit, on every shipped rule file."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from examples.fraud.generator import FEATURES as FRAUD_FEATURES
from model_handler.rules import NUMPY_MAX_ROWS, RuleSet

REPO = Path(__file__).resolve().parents[1]
TORCH_FREE = "import shm_operator.handlers, sys; assert 'torch' not in sys.modules"


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_importing_the_operator_imports_no_torch():
    done = run_python(TORCH_FREE)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_operator_carries_no_generated_kubernetes_client():
    """Its few API calls are plain REST (shm_operator.k8s): no kubernetes_asyncio (859 modules,
    about 39 MiB), which Kopf would also import whenever it is installed. The import stays small."""
    done = run_python("import shm_operator.handlers, sys; "
                      "assert not any(m.split('.')[0] in ('kubernetes_asyncio', 'kubernetes') for m in sys.modules), "
                      "sorted(m for m in sys.modules if m.startswith('kubernetes'))[:5]; "
                      "print(int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) // 1024)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) < 95, f"importing the operator takes {done.stdout.strip()} MiB"


def test_the_check_fails_when_something_imports_torch():
    """The one-liner above can fail: the same check after one torch import does."""
    done = run_python("import torch; " + TORCH_FREE)
    assert done.returncode != 0 and "AssertionError" in done.stderr


def test_what_the_operator_runs_of_rules_and_adapters_stays_torch_free(tmp_path):
    """Parsing, hashing and scoring rules (numpy), and the full adapter check on a real file, as the
    operator runs them: still no torch afterwards."""
    code = f"""
import sys, numpy as np
import shm_operator.handlers
from shm_operator.rollout import verified_meta
from model_handler.adapters import AdapterShapes
from model_handler.registry import AdapterRegistry
from model_handler.rules import RuleSet
from safetensors.numpy import save
rules = RuleSet.from_yaml({str(REPO / "examples/fraud/rules.yaml")!r},
                          {FRAUD_FEATURES!r}, ["legit", "fraud"])
assert len(rules.hash()) == 64 and rules.fires_array(np.zeros((3, {len(FRAUD_FEATURES)}), np.float32)).shape == (3, len(rules))
tensors = {{"input_shift": np.zeros(2, np.float32), "input_log_scale": np.zeros(2, np.float32),
           "input_sign": np.ones(2, np.float32), "down.weight": np.zeros((3, 4), np.float32),
           "down.bias": np.zeros(3, np.float32), "up.weight": np.zeros((4, 3), np.float32),
           "up.bias": np.zeros(4, np.float32), "logit_bias": np.zeros(2, np.float32)}}
registry = AdapterRegistry({(tmp_path / "store").as_uri()!r}, "ns", "m")
registry.put("v1", save(tensors), {{"base_model_hash": "b" * 64, "rules_hash": "r"}})
assert verified_meta(registry, "v1", AdapterShapes(2, 2), "b" * 64).version == "v1"
assert "torch" not in sys.modules, "torch was imported"
"""
    (tmp_path / "store").mkdir()
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------------------------------------ numpy == torch

def _rule_files() -> list[tuple[str, Path, list[str], list[str]]]:
    from examples.datasets import adult, elec2, ulb
    from examples.fraud import generator
    rules_dir = REPO / "examples" / "datasets" / "rules"
    return [("fraud", generator.RULES_FILE, list(generator.FEATURES), list(generator.CLASSES)),
            ("adult", rules_dir / "adult.yaml", list(adult.FEATURES), list(adult.CLASSES)),
            ("elec2", rules_dir / "elec2.yaml", list(elec2.FEATURES), list(elec2.CLASSES)),
            ("ulb", rules_dir / "ulb.yaml", list(ulb.FEATURES), list(ulb.CLASSES))]


def _rows(rules_text: str, n_features: int, rows: int, seed: int) -> np.ndarray:
    """Values where rules change their mind: every constant of the rules, a float32 step either
    side, its negation, plus zeros, NaN, +-inf, huge and tiny values and plain noise."""
    rng = np.random.default_rng(seed)
    constants = [float(c) for c in re.findall(r"(?<![A-Za-z_\d])(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", rules_text)]
    near = np.array(constants + [0.0, 1.0], dtype=np.float32)
    near = np.concatenate([near, np.nextafter(near, np.float32(np.inf)), np.nextafter(near, np.float32(-np.inf)),
                           -near, [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-38]]).astype(np.float32)
    x = (rng.standard_normal((rows, n_features)) * rng.choice([1, 10, 1000], (rows, n_features))).astype(np.float32)
    special = rng.random((rows, n_features)) < 0.5
    x[special] = rng.choice(near, int(special.sum()))
    return x


@pytest.mark.parametrize("name", ["fraud", "adult", "elec2", "ulb"])
def test_numpy_and_torch_evaluation_agree_on_the_shipped_rules(name):
    (_, path, features, classes), = [f for f in _rule_files() if f[0] == name]
    rules = RuleSet.from_yaml(path, features, classes)
    assert len(rules) > 0
    x = _rows(path.read_text(), len(features), NUMPY_MAX_ROWS + 1000, seed=len(name))
    on_torch = rules.fires(torch.from_numpy(x)).numpy()    # above NUMPY_MAX_ROWS: the torch ops
    on_numpy = rules.fires_array(x)
    assert on_torch.shape == on_numpy.shape == (len(x), len(rules))
    assert on_torch.any() and (~on_torch).any()            # the rows exercise both outcomes
    np.testing.assert_array_equal(on_numpy, on_torch)
    assert np.array_equal(rules.labels.numpy(), rules.label_index)
    assert np.array_equal(rules.weights.numpy(), rules.weight_array)


def test_the_spec_rules_of_the_example_agree_too():
    spec = yaml.safe_load((REPO / "examples" / "fraud" / "selfhealingmodel.yaml").read_text())["spec"]
    rules = RuleSet.from_dicts(spec["rules"], spec["features"], spec["classes"])
    x = _rows(yaml.safe_dump(spec["rules"]), len(spec["features"]), NUMPY_MAX_ROWS + 500, seed=7)
    np.testing.assert_array_equal(rules.fires_array(x), rules.fires(torch.from_numpy(x)).numpy())
