"""The serving fast paths give the reference paths' answers: the numpy FoldedPredictor against
`SelfHealingNet.forward` (identity and loaded adapters), numpy rule evaluation against the torch one,
bin counting in one bincount against one per feature, and deferred drift counting and sampling
against doing both for every request on its own."""
from __future__ import annotations

import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.fraud.generator import CLASSES, FEATURES, sample
from examples.fraud.train import build
from model_handler import rules as rules_module
from model_handler import service as service_module
from model_handler.model import FoldedPredictor, load_model
from model_handler.rules import RuleSet
from model_handler.service import ModelService, ServiceConfig
from model_handler.sketches import ENTROPY_BINS, DriftSketch, ReferenceProfile, _prediction_counts
from model_handler.traffic import TrafficStore
from model_handler.training import train_backbone

NAN, INF = math.nan, math.inf


# ------------------------------------------------------------------------------------------ model

@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 5)).astype(np.float32)
    x[:, 3] = np.exp(x[:, 3] * 2) * 100 * np.sign(rng.normal(size=500))  # heavy-tailed, both signs
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.3).astype(np.int64) + (x[:, 2] > 1.2)
    model = train_backbone(x, y, ["a", "b", "c", "amount", "e"], ["low", "mid", "high"],
                           log_features=["amount"], hidden=[24, 16], epochs=3)
    return model


def random_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, size=(n, 5)).astype(np.float32)
    x[:, 3] = rng.standard_cauchy(n) * 1e3    # the log feature, far into its tails
    x[0] = 0.0
    return x


def randomise_adapter(model, seed: int, up_zero: bool = False) -> None:
    """A loaded, non-identity adapter: every recalibration, residual and bias tensor moved."""
    gen = torch.Generator().manual_seed(seed)
    # class_prior records the prior a correction served (no output depends on it): it stays as is
    tensors = {k: v + 0.3 * torch.randn(v.shape, generator=gen) if k != "class_prior" else v
               for k, v in model.adapter_state().items()}
    if up_zero:
        tensors["up.weight"] = torch.zeros_like(tensors["up.weight"])
        tensors["up.bias"] = torch.zeros_like(tensors["up.bias"])
    model.load_adapter_state(tensors)


def reference_probs(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.forward(torch.from_numpy(x)), dim=-1).numpy()


def test_folded_predictor_matches_forward_with_the_identity_adapter(trained):
    model = trained.copy()
    model.reset_adapter()
    folded = FoldedPredictor(model)
    assert folded.residual is None            # up == 0: the residual is skipped, not computed
    x = random_rows(300, 1)
    probs = folded.predict_proba(x)
    assert probs.dtype == np.float32 and probs.shape == (300, 3)
    np.testing.assert_allclose(probs, reference_probs(model, x), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(folded.logits(x), model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_folded_predictor_matches_forward_with_loaded_adapters(trained, seed):
    model = trained.copy()
    randomise_adapter(model, seed)
    folded = FoldedPredictor(model)
    assert folded.residual is not None
    x = random_rows(200, seed)
    np.testing.assert_allclose(folded.predict_proba(x), reference_probs(model, x), rtol=1e-4, atol=1e-6)
    # and it is not trivially so: the base model answers differently on the same rows
    assert not np.allclose(FoldedPredictor(trained).predict_proba(x), folded.predict_proba(x), atol=1e-3)


def test_folded_predictor_skips_only_an_exactly_zero_residual(trained):
    model = trained.copy()
    randomise_adapter(model, 5, up_zero=True)
    x = random_rows(100, 5)
    assert FoldedPredictor(model).residual is None
    np.testing.assert_allclose(FoldedPredictor(model).predict_proba(x), reference_probs(model, x),
                               rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        model.adapter.up.bias[0] = 1e-30     # tiny, but not zero: must be computed
    assert FoldedPredictor(model).residual is not None


def test_folded_predictor_is_a_snapshot_and_checks_its_input(trained):
    model = trained.copy()
    model.reset_adapter()
    folded = FoldedPredictor(model)
    x = random_rows(10, 7)
    before = folded.predict_proba(x)
    randomise_adapter(model, 7)
    np.testing.assert_array_equal(folded.predict_proba(x), before)   # built before the change
    assert not np.allclose(FoldedPredictor(model).predict_proba(x), before, atol=1e-3)
    with pytest.raises(ValueError, match=r"\[N, 5\], got \[10, 4\]"):
        folded.predict_proba(x[:, :4])
    x_copy = x.copy()
    folded.predict_proba(x)
    np.testing.assert_array_equal(x, x_copy)     # the caller's rows are never modified
    assert folded.max_rows >= 1


# ------------------------------------------------------------------------------------------ rules

RULE_FEATURES = ["amount", "hour", "merchant_age", "is_new"]


def expressions():
    """Rule texts over every construct of the language, constants-only subtrees included."""
    leaf = st.sampled_from(RULE_FEATURES + ["0", "1", "2.5", "1e30", "0.1"])

    def numeric(inner):
        binary = st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
        unary = st.tuples(st.sampled_from(["-", "abs", "log"]), inner).map(
            lambda t: f"(-{t[1]})" if t[0] == "-" else f"{t[0]}({t[1]})")
        return binary | unary
    number = st.recursive(leaf, numeric, max_leaves=6)
    comparison = st.tuples(number, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), number).map(" ".join)

    def logic(inner):
        both = st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})")
        return both | inner.map(lambda e: f"not ({e})")
    return st.recursive(comparison | st.sampled_from(["true", "false"]), logic, max_leaves=4)


values = st.floats(width=32) | st.sampled_from([0.0, -0.0, 1.0, -1.0, NAN, INF, -INF, 3.4e38, 1e-45])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(expressions(), min_size=1, max_size=3),
       st.lists(st.lists(values, min_size=4, max_size=4), min_size=1, max_size=8))
def test_numpy_rule_evaluation_equals_torch_evaluation(whens, rows):
    rules = RuleSet.from_dicts([{"name": f"r{i}", "when": w, "label": "fraud"} for i, w in enumerate(whens)],
                               RULE_FEATURES, ["legit", "fraud"])
    x = np.array(rows, dtype=np.float32)
    fired = rules.fires_array(x)
    assert fired.dtype == np.bool_ and fired.shape == (len(rows), len(whens))
    with mock.patch.object(rules_module, "NUMPY_MAX_ROWS", -1):   # every batch through the torch ops
        with_torch = rules.fires(x).numpy()
    assert fired.tolist() == with_torch.tolist(), whens
    assert rules.fires(x).numpy().tolist() == fired.tolist()      # small batches: fires() is the numpy path


def test_numpy_rule_evaluation_semantics_and_input_checks():
    rules = RuleSet.from_dicts([
        {"name": "ne", "when": "amount != 3", "label": "fraud"},
        {"name": "const", "when": "1 / 0 > 1e30 and not false", "label": "fraud"},
        {"name": "log", "when": "log(amount) < 100", "label": "legit"},
    ], RULE_FEATURES, ["legit", "fraud"])
    x = np.array([[NAN, 0, 0, 0], [3, 0, 0, 0], [-1, 0, 0, 0], [INF, 0, 0, 0]])
    with np.errstate(all="raise"):   # IEEE results, never a floating-point exception
        fired = rules.fires_array(x)
    assert fired.tolist() == [[False, True, False], [False, True, True], [True, True, False], [True, True, False]]
    assert rules.fires_array(np.zeros((0, 4))).shape == (0, 3)
    with pytest.raises(ValueError, match=r"\[N, 4\].*got \[2, 3\]"):
        rules.fires_array(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="numpy array"):
        rules.fires_array([[1, 2, 3, 4]])


def test_large_batches_still_go_through_torch_and_agree():
    rules = RuleSet.from_dicts([{"name": "r", "when": "amount * 2 > hour or log(merchant_age) < 1",
                                 "label": "fraud"}], RULE_FEATURES, ["legit", "fraud"])
    x = np.random.default_rng(3).normal(size=(rules_module.NUMPY_MAX_ROWS + 10, 4)).astype(np.float32)
    assert torch.equal(rules.fires(x), torch.from_numpy(rules.fires_array(x)))
    assert torch.equal(rules.fires(torch.from_numpy(x)), rules.fires(x))


# ------------------------------------------------------------------------------------------ sketches

def searchsorted_bin_counts(profile: ReferenceProfile, x: np.ndarray) -> np.ndarray:
    """The bins feature by feature, one bincount each (what the single bincount must equal)."""
    counts = []
    for column, edges in enumerate(profile.edges):
        values = x[:, column]
        slot = np.searchsorted(edges, values, side="right")
        slot[~np.isfinite(values)] = len(edges) + 1
        counts.append(np.bincount(slot, minlength=len(edges) + 2))
    return np.concatenate(counts)


def test_one_bincount_over_all_features_equals_one_per_feature():
    rng = np.random.default_rng(4)
    fit_x = np.column_stack([rng.normal(size=400), rng.integers(0, 3, 400), np.full(400, 7.0),
                             rng.exponential(size=400)])
    probs = np.tile([0.3, 0.7], (400, 1))
    profile = ReferenceProfile.fit(fit_x, probs, np.zeros((400, 0), bool), np.zeros(0, np.int64),
                                   ["n", "discrete", "constant", "skewed"], ["a", "b"])
    edges = profile.edges
    x = rng.normal(size=(5000, 4)) * 3
    x[:len(edges[0]), 0] = edges[0]                        # exactly on edges
    x[:3, 1] = [0, 1, 2]
    x[5] = [NAN, INF, -INF, NAN]
    x[6, 2] = 7.0
    np.testing.assert_array_equal(profile.bin_counts(x), searchsorted_bin_counts(profile, x))
    np.testing.assert_array_equal(profile.bin_counts(x[:1]), searchsorted_bin_counts(profile, x[:1]))
    assert profile.bin_counts(x[:0]).sum() == 0


def test_entropy_bins_match_the_definition():
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.9, 0.1], [1e-320, 1.0], [0.7, 0.3]])
    counted = _prediction_counts(probs, np.zeros((6, 0), bool), np.zeros(0, np.int64))
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=1) / math.log(2)
    expected = np.bincount(np.clip(np.floor(entropy * ENTROPY_BINS), 0, ENTROPY_BINS - 1).astype(int),
                           minlength=ENTROPY_BINS)
    np.testing.assert_array_equal(counted["entropy"], expected)
    assert counted["entropy"][0] == 3 and counted["entropy"][ENTROPY_BINS - 1] == 1  # certain; uniform


# ------------------------------------------------------------------------------------------ service

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fraud-model")
    build(out, rows=2000, seed=0)
    return out


def test_service_answers_like_the_model_on_both_sides_of_the_fast_path_limit(model_dir):
    service = ModelService.from_model_dir(model_dir, ServiceConfig(model_name="fraud"))
    model = load_model(model_dir)
    limit = service.predictor.max_rows
    x = sample(np.random.default_rng(2), limit + 20).x.astype(np.float32)
    for n in (1, limit, limit + 1, limit + 20):
        answer = service.predict(x[:n].tolist())
        want = model.predict_proba(x[:n]).numpy()
        np.testing.assert_allclose(answer["probabilities"], want, rtol=1e-4, atol=1e-6)
        assert answer["label"] == [CLASSES[k] for k in want.argmax(1)]


def test_deferred_counting_equals_counting_every_request(model_dir, tmp_path):
    status_dir = tmp_path / "status"
    config = ServiceConfig(model_name="fraud", status_dir=str(status_dir), publish_interval_s=3600)
    service = ModelService.from_model_dir(model_dir, config)
    model = load_model(model_dir)
    rules = RuleSet.from_yaml(model_dir / "rules.yaml", FEATURES, CLASSES)
    reference = ReferenceProfile.from_dict(json.loads((model_dir / "reference.json").read_text()))
    expected = DriftSketch.empty(reference, len(rules), rules.hash())
    x = sample(np.random.default_rng(3), 60).x.astype(np.float32)
    service.publish()           # the next publish is an hour away: only the row limit counts
    with mock.patch.object(service_module, "COUNT_BATCH_ROWS", 25):
        for start in range(0, 60, 7):
            part = x[start:start + 7]
            service.predict(part.tolist())
            expected.update(part, model.predict_proba(part).numpy(), rules.fires(part).numpy(), rules.labels.numpy())
            if start == 28:     # 35 rows served: one count ran at 28, the last 7 rows wait
                assert service._sketch.n == 28
    assert service.sketch == expected                       # reading counts everything first
    service.predict(x[:5].tolist())
    published = json.loads(service.publish().read_text())
    assert published["sketch"]["n"] == 65 == published["rows"]


def test_deferred_sampling_reaches_the_store_without_a_status_dir(model_dir, tmp_path):
    (tmp_path / "store").mkdir()
    uri = f"file://{tmp_path / 'store'}"
    config = ServiceConfig(model_name="fraud", storage_uri=uri, sample_fraction=1.0, seed=0, publish_interval_s=0)
    service = ModelService.from_model_dir(model_dir, config)
    x = sample(np.random.default_rng(5), 9).x.astype(np.float32)
    for start in range(0, 9, 3):
        service.predict(x[start:start + 3].tolist())
    assert service.sampler.counters()["sampled"] == 9        # the publish interval (0 s) counts and samples
    service.close()
    stored, _ = TrafficStore(uri, "default", "fraud").read_recent(100)
    np.testing.assert_array_equal(np.sort(stored, axis=0), np.sort(x, axis=0))
