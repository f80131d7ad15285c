"""The atheris fuzz targets in fuzz/ run clean for a bounded number of inputs, and their TestOneInput
checks hold over a hypothesis corpus too (so the oracle is exercised even where atheris is missing)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import requests_target, rules_target
from model_handler.requests import RequestParser

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {"rules_target": rules_target, "requests_target": requests_target}


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_runs_clean_under_atheris(name, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = ROOT / "fuzz" / "corpus" / name.removesuffix("_target")
    result = subprocess.run(
        [sys.executable, "-m", f"fuzz.{name}", "-atheris_runs=5000", "-max_len=256", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(corpus), str(seeds)],
        cwd=tmp_path, env={**os.environ, "PYTHONSAFEPATH": "1"}, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Done 5000" in output, output[-2000:]
    assert not list(tmp_path.glob("crash-*")), output[-3000:]
    assert any(corpus.iterdir()), "the fuzzer found no new coverage at all: is the code instrumented?"


GRAMMAR = st.text(alphabet=st.sampled_from(list("amounthr_gise 0123456789.e+-*/<>=!()andortfls")), max_size=80)
JSONISH = st.lists(st.sampled_from(list('[]{},:"0123456789.-eE ') + ["NaN", "Infinity", "instances", "null", "true"]
                                   + [f'"{f}"' for f in requests_target.FEATURES]), max_size=60).map("".join)


@settings(max_examples=500, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200) | GRAMMAR.map(str.encode))
def test_rules_target_oracle_over_a_hypothesis_corpus(data):
    rules_target.TestOneInput(data)


@settings(max_examples=500, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200) | JSONISH.map(str.encode))
def test_requests_target_oracle_over_a_hypothesis_corpus(data):
    requests_target.TestOneInput(data)


def test_the_oracles_can_fail(monkeypatch):
    """A target that never raised would pass every run above: give each a fault its oracle must catch."""
    rules_target.TestOneInput(b"amount > 1")   # imports the modules under test
    m = rules_target._m
    off_by_one = {**m.rules.NUMPY.comparisons, ">": m.np.greater_equal}
    monkeypatch.setattr(m.rules, "NUMPY", m.rules.Backend(**{**vars(m.rules.NUMPY), "comparisons": off_by_one}))
    with pytest.raises(AssertionError, match="disagree"):
        rules_target.TestOneInput(b"hour > 2")    # one row has hour == 2, where > and >= differ
    requests_target.TestOneInput(b"[1, 2, 3, 4]")
    monkeypatch.setattr(requests_target, "_parser", RequestParser(["a", "b", "c"]))
    with pytest.raises(AssertionError, match="bad array"):
        requests_target.TestOneInput(b"[1, 2, 3]")
