"""Classification metrics in plain numpy (no scikit-learn dependency for three functions).

Binary metrics take the score of the positive class (index 1); multi-class ones are macro averages.
"""
from __future__ import annotations

import numpy as np


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float((y == pred).mean())


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class recall: what accuracy hides when one class is 99% of the rows."""
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(recalls))


def f1(y: np.ndarray, pred: np.ndarray, positive: int = 1) -> float:
    tp = float(((pred == positive) & (y == positive)).sum())
    fp = float(((pred == positive) & (y != positive)).sum())
    fn = float(((pred != positive) & (y == positive)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U with average ranks for ties."""
    pos, neg = int((y == 1).sum()), int((y != 1).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def pr_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision (step-wise area under the precision-recall curve)."""
    pos = int((y == 1).sum())
    if pos == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    hits = (y[order] == 1).astype(np.float64)
    # Treat tied scores as one threshold: evaluate precision only at the last row of each tie.
    last = np.r_[score[order][1:] != score[order][:-1], True]
    tp = np.cumsum(hits)[last]
    fp = np.cumsum(1 - hits)[last]
    precision = tp / (tp + fp)
    recall_gain = np.diff(np.r_[0.0, tp]) / pos
    return float((precision * recall_gain).sum())


def threshold_at_rate(score: np.ndarray, rate: float) -> float:
    """The score threshold that flags `rate` of the rows (for equal-flag-rate comparisons)."""
    if rate <= 0:
        return float("inf")
    return float(np.quantile(score, 1 - min(rate, 1.0)))


def scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    pred = probs.argmax(1)
    out = {"accuracy": accuracy(y, pred), "balanced_accuracy": balanced_accuracy(y, pred),
           "flag_rate": float((pred == 1).mean())}
    if probs.shape[1] == 2:
        out.update(f1=f1(y, pred), roc_auc=roc_auc(y, probs[:, 1]), pr_auc=pr_auc(y, probs[:, 1]))
    else:
        out.update(f1=float(np.mean([f1(y, pred, c) for c in range(probs.shape[1])])),
                   roc_auc=float("nan"), pr_auc=float("nan"))
    return out


def positive_class(y_train: np.ndarray, n_classes: int) -> int | None:
    """The minority class of a binary task whose minority is rare (under 30% of training rows):
    the class F1 and PR-AUC are about. None where they do not apply (multi-class, balanced)."""
    if n_classes != 2:
        return None
    shares = np.bincount(y_train, minlength=2) / max(len(y_train), 1)
    minority = int(np.argmin(shares))
    return minority if shares[minority] < 0.3 else None


def task_scores(y: np.ndarray, probs: np.ndarray, positive: int | None) -> dict[str, float | None]:
    """accuracy and balanced accuracy always; F1 and PR-AUC of the `positive` class where one is
    given (rare-positive binary tasks), else None."""
    pred = probs.argmax(1)
    out: dict[str, float | None] = {"accuracy": accuracy(y, pred), "balanced_accuracy": balanced_accuracy(y, pred),
                                    "f1": None, "pr_auc": None, "roc_auc": None}
    if positive is not None:
        hit = (y == positive).astype(np.int64)
        out.update(f1=f1(hit, (pred == positive).astype(np.int64)), pr_auc=pr_auc(hit, probs[:, positive]),
                   roc_auc=roc_auc(hit, probs[:, positive]), flag_rate=float((pred == positive).mean()))
    return out


def harms(method: dict, none: dict, keys: list[str], margin: float) -> list[str]:
    """The metrics in `keys` on which `method` is worse than `none` by more than `margin`."""
    return [k for k in keys if method.get(k) is not None and none.get(k) is not None
            and not np.isnan(method[k]) and not np.isnan(none[k]) and method[k] < none[k] - margin]
