"""The methods selfheal is compared with, each acting on the same adapter of the same backbone.

- oracle: all adapter parameters trained with the TRUE labels of the drifted stream (upper bound).
- tent: TENT-style online entropy minimisation (Wang et al. 2021) of the adapter's per-feature
  affine recalibration, the analogue of TENT's normalisation affine parameters.
- norm_stats: normalisation statistics re-estimated from the drifted stream (Schneider et al.
  2020), applied to every feature.
- em_prior: EM prior correction of the output (Saerens et al. 2002) on the drifted stream.
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
