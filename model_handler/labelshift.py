"""Label shift without labels: how much each class's share of traffic changed, from a model's outputs.

Two estimators built on different assumptions, so that each can check the other:
- **EM-BCTS** (Saerens et al. 2002; Alexandari et al. 2020): maximum-likelihood EM over the class
  prior, run on probabilities calibrated by bias-corrected temperature scaling (one temperature and
  one bias per class, fitted on labelled source rows the backbone did not train on). It trusts the
  calibrated probabilities.
- **BBSE** (Lipton et al. 2018): q = C^-1 mu, with C = P(predicted | true) on the same source rows
  and mu the predicted-class rates of the traffic. It trusts only hard predictions and the
  confusion matrix, not the probabilities.
Both assume p(x | y) did not change (a pure label shift); where it did, they disagree, and the gate
refuses a prior correction that only one of them supports. Intervals come from a bootstrap over rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EM_ITERATIONS = 200
EM_TOLERANCE = 1e-8


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_bcts(logits: np.ndarray, labels: np.ndarray, iterations: int = 200) -> tuple[float, np.ndarray]:
    """Bias-corrected temperature scaling: (T, b) minimising the NLL of softmax(logits / T + b)
    on labelled rows. b[0] is fixed at 0 (softmax is shift-invariant)."""
    import torch

    x = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need [N, C] logits and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(x.shape[1] - 1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t, bias], lr=0.5, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        full = torch.cat([torch.zeros(1, dtype=torch.float64), bias])
        loss = torch.nn.functional.cross_entropy(x / log_t.exp() + full, y)
        loss.backward()
        return loss

    optimiser.step(closure)
    full = np.concatenate([[0.0], bias.detach().numpy()])
    temperature = float(np.exp(log_t.item()))
    if not np.isfinite(temperature) or not np.isfinite(full).all():
        return 1.0, np.zeros(x.shape[1])
    return temperature, full


def calibrated(logits: np.ndarray, temperature: float, bias: np.ndarray | None) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    b = np.zeros(logits.shape[1]) if bias is None or len(bias) == 0 else np.asarray(bias, dtype=np.float64)
    return softmax(logits / temperature + b)


def em_prior(probs: np.ndarray, source_prior: np.ndarray, iterations: int = EM_ITERATIONS) -> np.ndarray:
    """Saerens-Latinne-Decaestecker EM: the class prior that best explains unlabeled rows whose
    (calibrated) probabilities were made for `source_prior`."""
    p = np.asarray(probs, dtype=np.float64)
    source = np.asarray(source_prior, dtype=np.float64)
    prior = source.copy()
    for _ in range(iterations):
        w = p * (prior / source)
        w /= w.sum(1, keepdims=True)
        new = w.mean(0)
        done = np.abs(new - prior).max() < EM_TOLERANCE
        prior = new
        if done:
            break
    return prior


def bbse_prior(confusion: np.ndarray, predicted_rates: np.ndarray, floor: float = 1e-4) -> np.ndarray:
    """q solving C q = mu (C[i, j] = P(predicted i | true j)), clipped at `floor` and renormalised."""
    c = np.asarray(confusion, dtype=np.float64)
    mu = np.asarray(predicted_rates, dtype=np.float64)
    try:
        q = np.linalg.solve(c, mu)
    except np.linalg.LinAlgError:
        q = np.linalg.lstsq(c, mu, rcond=None)[0]
    q = np.clip(q, floor, None)
    return q / q.sum()


@dataclass
class PriorEstimate:
    """Both estimates with bootstrap intervals, and whether they make the case for a change."""

    source: np.ndarray
    em: np.ndarray
    em_low: np.ndarray
    em_high: np.ndarray
    bbse: np.ndarray | None
    bbse_low: np.ndarray | None
    bbse_high: np.ndarray | None

    def excludes_source(self) -> np.ndarray:
        """[C] bool: the EM interval lies wholly on one side of the source prior."""
        return (self.em_low > self.source) | (self.em_high < self.source)

    def nearest(self, prior: np.ndarray) -> np.ndarray:
        """The smallest change the evidence supports: per class, the end of the EM interval nearest
        `prior` (the prior itself where the interval holds it), renormalised."""
        prior = np.asarray(prior, dtype=np.float64)
        q = np.clip(prior, self.em_low, self.em_high)
        return q / q.sum()

    def agree(self, tolerance: float = np.log(1.5)) -> bool | None:
        """Do the two estimators tell the same story? None when BBSE is unavailable. They agree if
        their intervals overlap for every class, or their log-ratios to the source prior are
        within `tolerance` of each other."""
        if self.bbse is None:
            return None
        overlap = (self.em_low <= self.bbse_high) & (self.bbse_low <= self.em_high)
        close = np.abs(np.log(self.em / self.source) - np.log(self.bbse / self.source)) <= tolerance
        same_side = np.sign(self.em - self.source) == np.sign(self.bbse - self.source)
        return bool(np.all((overlap | close) & (same_side | close)))

    def to_dict(self) -> dict:
        def r(v):
            return None if v is None else [round(float(x), 5) for x in v]
        return {"source": r(self.source), "em": r(self.em), "em_interval": [r(self.em_low), r(self.em_high)],
                "bbse": r(self.bbse), "bbse_interval": [r(self.bbse_low), r(self.bbse_high)]}


def estimate(probs: np.ndarray, source_prior: np.ndarray, confusion: np.ndarray | None = None, *,
             bootstraps: int = 40, level: float = 0.95, seed: int = 0) -> PriorEstimate:
    """EM (on calibrated `probs`) and BBSE (on their argmax) with percentile bootstrap intervals."""
    p = np.asarray(probs, dtype=np.float64)
    source = np.asarray(source_prior, dtype=np.float64)
    n, k = p.shape
    rng = np.random.default_rng(seed)
    predicted = p.argmax(1)

    def rates(rows: np.ndarray) -> np.ndarray:
        return np.bincount(predicted[rows], minlength=k) / max(len(rows), 1)

    every = np.arange(n)
    em = em_prior(p, source)
    bbse = bbse_prior(confusion, rates(every)) if confusion is not None else None
    em_draws, bbse_draws = [], []
    for _ in range(bootstraps):
        rows = rng.integers(0, n, n)
        em_draws.append(em_prior(p[rows], source, iterations=60))
        if confusion is not None:
            bbse_draws.append(bbse_prior(confusion, rates(rows)))
    tail = (1 - level) / 2 * 100
    em_low, em_high = np.percentile(em_draws, [tail, 100 - tail], axis=0)
    if confusion is None:
        return PriorEstimate(source, em, em_low, em_high, None, None, None)
    b_low, b_high = np.percentile(bbse_draws, [tail, 100 - tail], axis=0)
    return PriorEstimate(source, em, em_low, em_high, bbse, b_low, b_high)
