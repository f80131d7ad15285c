"""Benchmark metrics against brute-force definitions."""
import itertools

import numpy as np

from bench.metrics import accuracy, f1, pr_auc, roc_auc, scores, threshold_at_rate


def brute_roc_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg)]
    return float(np.mean(pairs))


def brute_average_precision(y, s):
    thresholds = np.unique(s)[::-1]
    ap, prev_recall = 0.0, 0.0
    for t in thresholds:
        flagged = s >= t
        tp = (flagged & (y == 1)).sum()
        recall = tp / (y == 1).sum()
        ap += (recall - prev_recall) * tp / flagged.sum()
        prev_recall = recall
    return ap


def test_roc_and_pr_auc_match_brute_force_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = (rng.random(40) < 0.3).astype(int)
        if y.sum() in (0, len(y)):
            continue
        s = np.round(rng.random(40) + 0.4 * y, 1)  # rounding creates ties
        assert np.isclose(roc_auc(y, s), brute_roc_auc(y, s))
        assert np.isclose(pr_auc(y, s), brute_average_precision(y, s))


def test_perfect_and_degenerate_cases():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert pr_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert np.isnan(roc_auc(np.zeros(4, int), np.arange(4.0)))
    assert f1(y, np.zeros(4, int)) == 0.0
    assert accuracy(y, y) == 1.0


def test_threshold_at_rate_flags_that_share():
    s = np.linspace(0, 1, 1001)
    assert abs((s >= threshold_at_rate(s, 0.1)).mean() - 0.1) < 0.002
    assert not (s >= threshold_at_rate(s, 0.0)).any()


def test_scores_binary_keys():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    out = scores(np.array([0, 1, 1]), probs)
    assert out["accuracy"] == 2 / 3 and out["flag_rate"] == 1 / 3
    assert set(out) >= {"f1", "roc_auc", "pr_auc"}
