"""The methods selfheal is compared with, each acting on the same adapter of the same backbone.

- oracle: all adapter parameters trained with the TRUE labels of the drifted stream (upper bound).
- tent: TENT-style online entropy minimisation (Wang et al. 2021) of the adapter's per-feature
  affine recalibration, the analogue of TENT's normalisation affine parameters.
- norm_stats: normalisation statistics re-estimated from the drifted stream (Schneider et al.
  2020), applied to every feature.
- em_prior: EM prior correction of the output (Saerens et al. 2002) on the drifted stream.
- em_bcts: EM prior correction after bias-corrected temperature scaling (Alexandari et al. 2020),
  the calibration fitted by train_backbone on its labelled SOURCE calibration split.
- bbse: black-box shift estimation (Lipton et al. 2018): the confusion matrix of the model's hard
  predictions on that split, q = C^-1 mu (mu = predicted class rates on the stream), clipped and
  renormalised, applied as a logit bias log(q / pi).

The label-shift estimators are model_handler/labelshift.py's, the ones selfheal's heal uses.
"""
from __future__ import annotations

import numpy as np
import torch

from model_handler import labelshift
from model_handler.model import SelfHealingNet


def oracle(model: SelfHealingNet, x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 0.02,
           seed: int = 0) -> SelfHealingNet:
    torch.manual_seed(seed)
    m = model.copy()
    # every adapter tensor but the raw-space unit factor, which is set by a diagnosis, not learnt
    params = [p for name, p in m.adapter.named_parameters() if name != "input_unit"]
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
    assumed = m.served_prior()
    estimated = labelshift.em_prior(m.predict_proba(x_seen).numpy(), assumed)
    with torch.no_grad():
        m.adapter.logit_bias += torch.as_tensor(np.log(np.maximum(estimated, 1e-6) / assumed),
                                                dtype=torch.float32)
    return m


# ---- label shift: BCTS + EM, BBSE ---------------------------------------------------------------
# Both use what `train_backbone` fitted on its labelled source calibration split (the backbone never
# trained on it): the BCTS temperature and biases, and the confusion matrix; the estimators are
# model_handler.labelshift's, the same selfheal's heal uses. Unlike selfheal, these baselines apply
# their estimate to every window, unconditionally and ungated.

def logits_of(model: SelfHealingNet, x: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(x, dtype=np.float32)))


class Recalibrated:
    """A model seen through logits / T + b (the adapter cannot hold a temperature)."""

    def __init__(self, model: SelfHealingNet, temperature: float, bias: np.ndarray):
        self.model, self.temperature = model, temperature
        self.bias = torch.as_tensor(bias, dtype=torch.float32)

    def predict_proba(self, x) -> torch.Tensor:
        return torch.softmax(logits_of(self.model, x) / self.temperature + self.bias, 1)


class LabelShiftCalibration:
    """What em_bcts and bbse take from the model's calibration split."""

    def __init__(self, model: SelfHealingNet):
        spec = model.spec
        n_classes = len(spec.classes)
        if not spec.confusion:
            raise ValueError("the model has no calibration (train_backbone fits it on >= 2000 labelled rows)")
        self.model, self.temperature = model, spec.calibration_temperature
        self.bias = np.asarray(spec.calibration_bias or np.zeros(n_classes), dtype=np.float64)
        self.confusion = np.asarray(spec.confusion, dtype=np.float64)
        self.source_prior = np.maximum(np.asarray(spec.train_prior, dtype=np.float64), 1e-6)

    def em(self, x_seen: np.ndarray) -> Recalibrated:
        calibrated = Recalibrated(self.model, self.temperature, self.bias)
        q = labelshift.em_prior(calibrated.predict_proba(x_seen).numpy(), self.source_prior)
        return Recalibrated(self.model, self.temperature,
                            self.bias + np.log(np.maximum(q, 1e-6) / self.source_prior))

    def true_prior(self, y_stream: np.ndarray) -> Recalibrated:
        """The reference a label-shift fix cannot beat: the stream's TRUE class prior (labels
        used, only their counts), applied like em_bcts's estimate."""
        q = np.bincount(np.asarray(y_stream, dtype=np.int64), minlength=len(self.source_prior)) / max(len(y_stream), 1)
        return Recalibrated(self.model, self.temperature,
                            self.bias + np.log(np.maximum(q, 1e-6) / self.source_prior))

    def bbse(self, x_seen: np.ndarray) -> SelfHealingNet:
        n_classes = len(self.source_prior)
        mu = np.bincount(self.model.predict_proba(x_seen).argmax(1).numpy(), minlength=n_classes) / len(x_seen)
        q = labelshift.bbse_prior(self.confusion, mu)
        m = self.model.copy()
        with torch.no_grad():
            m.adapter.logit_bias += torch.as_tensor(np.log(np.maximum(q, 1e-6) / self.source_prior),
                                                    dtype=torch.float32)
        return m
