"""The methods selfheal is compared with, each acting on the same adapter of the same backbone.

- oracle: all adapter parameters trained with the TRUE labels of the drifted stream (upper bound).
- tent: TENT-style online entropy minimisation (Wang et al. 2021) of the adapter's per-feature
  affine recalibration, the analogue of TENT's normalisation affine parameters.
- norm_stats: normalisation statistics re-estimated from the drifted stream (Schneider et al.
  2020), applied to every feature.
- em_prior: EM prior correction of the output (Saerens et al. 2002) on the drifted stream.
- em_bcts: EM prior correction after bias-corrected temperature scaling (Alexandari et al. 2020),
  the calibration fitted on a labelled validation split of the SOURCE data.
- bbse: black-box shift estimation (Lipton et al. 2018): the confusion matrix of the model's hard
  predictions on the source validation split, q = C^-1 mu (mu = predicted class rates on the
  stream), clipped and renormalised, applied as a logit bias log(q / pi).

`fit_bcts`, `em_prior_estimate` and `bbse_prior` are written here until model_handler/labelshift.py
lands; the lead dedupes.
"""
from __future__ import annotations

import numpy as np
import torch

from model_handler.gate import _implied_prior
from model_handler.healing import estimate_prior_em
from model_handler.model import SelfHealingNet


def oracle(model: SelfHealingNet, x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 0.02,
           seed: int = 0) -> SelfHealingNet:
    torch.manual_seed(seed)
    m = model.copy()
    params = list(m.adapter.parameters())
    for p in m.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    optimiser = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(m(xt), yt).backward()
        optimiser.step()
    for p in params:
        p.requires_grad_(False)
    return m


class Tent:
    """Online: a few entropy-minimisation steps on each new batch, state carried over."""

    def __init__(self, model: SelfHealingNet, lr: float = 0.01, steps_per_batch: int = 10):
        self.model = model.copy()
        self.params = [self.model.adapter.input_shift, self.model.adapter.input_log_scale]
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.optimiser = torch.optim.Adam(self.params, lr=lr)
        self.steps = steps_per_batch

    def update(self, x_batch: np.ndarray) -> None:
        xt = torch.as_tensor(x_batch)
        for p in self.params:
            p.requires_grad_(True)
        for _ in range(self.steps):
            self.optimiser.zero_grad()
            log_p = torch.log_softmax(self.model(xt), 1)
            (-(log_p.exp() * log_p).sum(1).mean()).backward()
            self.optimiser.step()
        for p in self.params:
            p.requires_grad_(False)


def norm_stats(model: SelfHealingNet, x_seen: np.ndarray) -> SelfHealingNet:
    m = model.copy()
    with torch.no_grad():
        z = m.transform(torch.as_tensor(x_seen))
        m.adapter.input_shift.copy_(z.mean(0))
        m.adapter.input_log_scale.copy_(torch.log(z.std(0).clamp_min(1e-3)))
    return m


def em_prior(model: SelfHealingNet, x_seen: np.ndarray) -> SelfHealingNet:
    m = model.copy()
    assumed = _implied_prior(m)
    estimated = estimate_prior_em(m.predict_proba(x_seen), assumed)
    with torch.no_grad():
        m.adapter.logit_bias += torch.as_tensor(np.log(np.maximum(estimated, 1e-6) / assumed),
                                                dtype=torch.float32)
    return m


# ---- label shift: BCTS + EM, BBSE ---------------------------------------------------------------

def logits_of(model: SelfHealingNet, x: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(x, dtype=np.float32)))


def fit_bcts(logits: torch.Tensor, y: np.ndarray, steps: int = 200) -> tuple[float, np.ndarray]:
    """Bias-corrected temperature scaling: softmax(logits / T + b) fitted by NLL on labelled rows."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(logits.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t, bias], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp() + bias, yt)
        loss.backward()
        return loss
    optimiser.step(closure)
    return float(log_t.detach().exp()), bias.detach().numpy()


def em_prior_estimate(probs: np.ndarray, prior: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Saerens EM on calibrated probabilities whose class prior is `prior`."""
    p = np.asarray(probs, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    q = prior.copy()
    for _ in range(iterations):
        w = p * (q / prior)
        w /= w.sum(1, keepdims=True)
        new = w.mean(0)
        if np.abs(new - q).max() < 1e-8:
            return new
        q = new
    return q


def bbse_prior(confusion: np.ndarray, predicted_rates: np.ndarray, source_prior: np.ndarray) -> np.ndarray:
    """q from C w = mu, C[i, j] = P_source(pred = i, y = j), w = q / pi; clipped at 0, renormalised."""
    w = np.linalg.lstsq(confusion, predicted_rates, rcond=None)[0]
    q = np.clip(w, 0, None) * source_prior
    return q / q.sum() if q.sum() > 0 else np.asarray(source_prior, dtype=np.float64)


class Recalibrated:
    """A model seen through logits / T + b (the adapter cannot hold a temperature)."""

    def __init__(self, model: SelfHealingNet, temperature: float, bias: np.ndarray):
        self.model, self.temperature = model, temperature
        self.bias = torch.as_tensor(bias, dtype=torch.float32)

    def predict_proba(self, x) -> torch.Tensor:
        return torch.softmax(logits_of(self.model, x) / self.temperature + self.bias, 1)


class LabelShiftCalibration:
    """What em_bcts and bbse learn once from the labelled source validation split."""

    def __init__(self, model: SelfHealingNet, temperature: float, bias: np.ndarray, confusion: np.ndarray,
                 source_prior: np.ndarray):
        self.model, self.temperature, self.bias = model, temperature, bias
        self.confusion, self.source_prior = confusion, source_prior

    @classmethod
    def fit(cls, model: SelfHealingNet, x_val: np.ndarray, y_val: np.ndarray) -> LabelShiftCalibration:
        n_classes = len(model.spec.classes)
        temperature, bias = fit_bcts(logits_of(model, x_val), y_val)
        pred_val = model.predict_proba(x_val).argmax(1).numpy()
        confusion = np.zeros((n_classes, n_classes))
        np.add.at(confusion, (pred_val, y_val), 1.0)
        source_prior = np.maximum(np.bincount(y_val, minlength=n_classes) / len(y_val), 1e-6)
        return cls(model, temperature, bias, confusion / len(y_val), source_prior)

    def em(self, x_seen: np.ndarray) -> Recalibrated:
        calibrated = Recalibrated(self.model, self.temperature, self.bias)
        q = em_prior_estimate(calibrated.predict_proba(x_seen).numpy(), self.source_prior)
        return Recalibrated(self.model, self.temperature,
                            self.bias + np.log(np.maximum(q, 1e-6) / self.source_prior))

    def bbse(self, x_seen: np.ndarray) -> SelfHealingNet:
        n_classes = len(self.source_prior)
        mu = np.bincount(self.model.predict_proba(x_seen).argmax(1).numpy(), minlength=n_classes) / len(x_seen)
        q = bbse_prior(self.confusion, mu, self.source_prior)
        m = self.model.copy()
        with torch.no_grad():
            m.adapter.logit_bias += torch.as_tensor(np.log(np.maximum(q, 1e-6) / self.source_prior),
                                                    dtype=torch.float32)
        return m
