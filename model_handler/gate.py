"""The promotion gate: a candidate adapter is promoted only if checks it was not trained on say it
is better and nothing says it is dangerous.

All checks run on held-out recent traffic that no healing step saw. Without labels "better" means:
every fix the healer applied must improve the held-out quantity that fix is about (recalibration ->
inputs look like the reference again; prior correction -> the held-out rows are more likely under
the new prior; adapter training -> fewer conflicts with trusted rules). "Not dangerous" means:
finite outputs, bounded adapter parameters, plausible class rates, no entropy collapse, limited
disagreement with the cheaply fixed model, and no new conflicts with rules whose inputs did not drift.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from model_handler.model import SelfHealingNet
from model_handler.training import QUANTILES


@dataclass
class GateConfig:
    min_input_fit_gain: float = 0.05      # relative drop of input PSI a recalibration must achieve
    min_prior_fit_gain: float = 1e-3      # mean held-out log-likelihood gain of a prior correction
    min_conflict_drop: float = 0.005      # absolute drop of trusted-rule conflict rate
    conflict_tolerance: float = 0.002     # trusted-rule conflicts may not rise more than this
    max_class_rate_ratio: float = 3.0     # predicted class rate vs the expected prior, both ways
    max_class_rate_delta: float = 0.05    # ... unless within this absolute distance
    max_disagreement: float = 0.20        # vs the cheaply fixed model, for adapter training
    min_entropy_ratio: float = 0.25       # mean entropy vs the recalibrated model's (collapse guard)
    min_rule_support: float = 0.5         # exponent: trusted rules must move >= ratio**this with a prior
    min_expected_fires: float = 5.0       # rule evidence below this many expected firings is no evidence
    prior_ratio_checked: float = 1.25     # classes whose prior moved less than this need no rule evidence
    max_adapter_norm: float = 25.0        # L2 norm of the adapter's change from identity


@dataclass
class GateCheck:
    name: str
    value: float
    limit: float
    passed: bool
    detail: str = ""


@dataclass
class GateReport:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    def summary(self) -> str:
        if self.passed:
            return "passed all %d checks" % len(self.checks)
        return "refused: " + "; ".join(f"{c.name} ({c.detail or f'{c.value:.4g} vs limit {c.limit:.4g}'})"
                                       for c in self.checks if not c.passed)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "failed": self.failed,
                "checks": [asdict(c) for c in self.checks]}


def input_psi(model: SelfHealingNet, x: torch.Tensor) -> float:
    """Mean PSI of the recalibrated, normalised inputs against the training quantile bins.

    Only features with at least 10 distinct reference quantiles (continuous ones) count: for
    those every bin holds 5% of the reference by construction.
    """
    q = np.asarray(model.spec.reference_quantiles)
    if q.size == 0:
        return 0.0
    with torch.no_grad():
        z = model.adapter.recalibrate(model.transform(x)).numpy()
    ref = np.diff(np.concatenate([[0.0], QUANTILES, [1.0]]))
    values = []
    for j in range(z.shape[1]):
        if len(np.unique(q[j])) < 10:
            continue
        counts = np.bincount(np.searchsorted(q[j], z[:, j], side="right"), minlength=len(ref))
        p = (counts + 0.5) / (counts.sum() + 0.5 * len(ref))
        values.append(float(np.sum((p - ref) * np.log(p / ref))))
    return float(np.mean(values)) if values else 0.0


def mixture_log_likelihood(probs: torch.Tensor, assumed_prior: np.ndarray, new_prior: np.ndarray) -> float:
    """Mean log of sum_y p(y|x) * new/assumed: how much better `new_prior` explains the rows."""
    ratio = torch.as_tensor(new_prior / assumed_prior, dtype=probs.dtype)
    return float(torch.log((probs * ratio).sum(1).clamp_min(1e-12)).mean())


def trusted_conflict_rate(labels_pred: torch.Tensor, fires: torch.Tensor, rule_labels: torch.Tensor,
                          trusted: np.ndarray) -> float:
    """Share of rows where a trusted rule fires and the prediction disagrees with it."""
    if not trusted.any() or fires.numel() == 0:
        return 0.0
    f = fires[:, torch.as_tensor(trusted)]
    lab = rule_labels[torch.as_tensor(trusted)]
    conflict = f & (labels_pred[:, None] != lab[None, :])
    return float(conflict.any(1).float().mean())


def prior_rule_support(assumed: np.ndarray, new: np.ndarray, fires: torch.Tensor, rule_labels: torch.Tensor,
                       trusted: np.ndarray, reference_fire_rates: np.ndarray,
                       config: GateConfig) -> tuple[float, float, str]:
    """Does independent evidence agree with a prior change? Under a pure prior shift the trusted
    rules of a class fire more (or less) in proportion to that class's prior; a covariate shift
    that merely fools EM moves no trusted rule. Returns (worst support ratio, limit, detail),
    with support normalised so that >= limit passes.
    """
    n = fires.shape[0]
    now = fires.float().sum(0).numpy()
    labels = rule_labels.numpy()
    worst, detail = np.inf, "no class prior changed"
    for c, (a, b) in enumerate(zip(assumed, new)):
        ratio = b / a
        if abs(np.log(ratio)) < np.log(config.prior_ratio_checked):
            continue  # a class whose prior barely moved (the rest of a shift elsewhere) needs no evidence
        mask = trusted & (labels == c)
        expected = float((reference_fire_rates[mask] * n).sum())
        if expected * max(ratio, 1.0) < config.min_expected_fires:
            return 0.0, 1.0, (f"class {c}: no trusted rule fires often enough to confirm a prior change "
                              f"(expected {expected:.1f} firings)")
        observed = float(now[mask].sum())
        moved = observed / max(expected, 1e-9)
        # support: how far the rules moved, in units of the required move (ratio ** min_rule_support)
        need = ratio ** config.min_rule_support
        support = np.log(moved) / np.log(need) if ratio > 1 else np.log(1 / max(moved, 1e-9)) / np.log(1 / need)
        if support < worst:
            worst = float(support)
            detail = (f"class {c}: prior x{ratio:.2f}, its trusted rules fire x{moved:.2f} "
                      f"(need x{need:.2f}; {observed:.0f} vs {expected:.1f} expected)")
    return (1.0 if worst == np.inf else worst), 1.0, detail


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    c = probs.shape[1]
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(1) / np.log(c)


@torch.no_grad()
def adapter_change_norm(model: SelfHealingNet) -> float:
    a = model.adapter
    return float(torch.sqrt(a.input_shift.pow(2).sum() + a.input_log_scale.pow(2).sum()
                            + a.up.weight.pow(2).sum() + a.up.bias.pow(2).sum()
                            + a.logit_bias.pow(2).sum()))


def evaluate_gate(served: SelfHealingNet, cheap_fixed: SelfHealingNet, candidate: SelfHealingNet,
                  x_holdout: np.ndarray, fires: torch.Tensor, rule_labels: torch.Tensor,
                  trusted: np.ndarray, reference_fire_rates: np.ndarray, expected_prior: np.ndarray,
                  steps: list[str], config: GateConfig = GateConfig()) -> GateReport:
    """Judge `candidate` on held-out rows.

    served: the model as it serves now (last good adapter); cheap_fixed: served + recalibration +
    prior correction (the reference for adapter training); fires: rule firings on x_holdout;
    trusted: bool mask of rules whose inputs did not drift; reference_fire_rates: each rule's
    firing rate on the training data; expected_prior: the class prior the healer believes in.
    """
    x = torch.as_tensor(x_holdout, dtype=torch.float32)
    checks: list[GateCheck] = []

    def check(name: str, value: float, limit: float, passed: bool, detail: str = "") -> None:
        checks.append(GateCheck(name, float(value), float(limit), bool(passed), detail))

    with torch.no_grad():
        logits = candidate(x)
        finite = bool(torch.isfinite(logits).all())
        check("finite_outputs", float(finite), 1.0, finite, "" if finite else "non-finite logits")
        if not finite:
            return GateReport(False, checks)
        p_cand = torch.softmax(logits, 1)
        p_served = served.predict_proba(x)
        p_cheap = cheap_fixed.predict_proba(x)
    pred_cand, pred_served, pred_cheap = p_cand.argmax(1), p_served.argmax(1), p_cheap.argmax(1)

    norm = adapter_change_norm(candidate)
    check("adapter_norm", norm, config.max_adapter_norm, norm <= config.max_adapter_norm)

    # Every applied fix must improve the held-out quantity it is about.
    if "recalibrate" in steps:
        before, after = input_psi(served, x), input_psi(candidate, x)
        gain = (before - after) / max(before, 1e-9)
        check("recalibration_improves_input_fit", gain, config.min_input_fit_gain,
              gain >= config.min_input_fit_gain, f"input PSI {before:.3f} -> {after:.3f}")
    if "prior" in steps:
        assumed = _implied_prior(served)
        new = _implied_prior(candidate)
        p_recal = _without_bias_change(candidate, served).predict_proba(x)
        gain = mixture_log_likelihood(p_recal, assumed, new) - mixture_log_likelihood(p_recal, assumed, assumed)
        check("prior_improves_likelihood", gain, config.min_prior_fit_gain,
              gain >= config.min_prior_fit_gain, f"held-out log-likelihood gain {gain:.4f}")
        support, limit, detail = prior_rule_support(assumed, new, fires, rule_labels, trusted,
                                                    reference_fire_rates, config)
        check("prior_supported_by_rules", support, limit, support >= limit, detail)
    conflict_served = trusted_conflict_rate(pred_served, fires, rule_labels, trusted)
    conflict_cheap = trusted_conflict_rate(pred_cheap, fires, rule_labels, trusted)
    conflict_cand = trusted_conflict_rate(pred_cand, fires, rule_labels, trusted)
    if "adapter" in steps:
        drop = conflict_cheap - conflict_cand
        check("adapter_reduces_rule_conflicts", drop, config.min_conflict_drop,
              drop >= config.min_conflict_drop, f"trusted-rule conflicts {conflict_cheap:.4f} -> {conflict_cand:.4f}")
        disagreement = float((pred_cand != pred_cheap).float().mean())
        check("disagreement_with_recalibrated_model", disagreement, config.max_disagreement,
              disagreement <= config.max_disagreement)
    rise = conflict_cand - conflict_served
    check("no_new_trusted_rule_conflicts", rise, config.conflict_tolerance, rise <= config.conflict_tolerance,
          f"trusted-rule conflicts {conflict_served:.4f} -> {conflict_cand:.4f}")

    rates = np.bincount(pred_cand.numpy(), minlength=p_cand.shape[1]) / len(pred_cand)
    worst, worst_detail = 0.0, ""
    plausible = True
    for c, (rate, expected) in enumerate(zip(rates, expected_prior)):
        ratio = max(rate, 1e-6) / max(expected, 1e-6)
        ratio = max(ratio, 1.0 / ratio)
        ok = ratio <= config.max_class_rate_ratio or abs(rate - expected) <= config.max_class_rate_delta
        if ratio > worst:
            worst, worst_detail = ratio, f"class {c}: predicted rate {rate:.3f}, expected {expected:.3f}"
        plausible &= ok
    check("class_rates_plausible", worst, config.max_class_rate_ratio, plausible, worst_detail)

    ent_cand = float(normalised_entropy(p_cand).mean())
    ent_cheap = float(normalised_entropy(p_cheap).mean())
    ratio = ent_cand / max(ent_cheap, 1e-9)
    collapsed = len(np.unique(pred_cand.numpy())) < min(2, len(expected_prior))
    check("no_entropy_collapse", ratio, config.min_entropy_ratio,
          ratio >= config.min_entropy_ratio and not collapsed,
          "predicts a single class" if collapsed else f"mean entropy {ent_cheap:.3f} -> {ent_cand:.3f}")
    return GateReport(all(c.passed for c in checks), checks)


def _implied_prior(model: SelfHealingNet) -> np.ndarray:
    """The class prior a model's outputs are calibrated for: training prior tilted by its logit bias."""
    prior = np.asarray(model.spec.train_prior, dtype=np.float64)
    tilted = prior * np.exp(model.adapter.logit_bias.detach().double().numpy())
    return tilted / tilted.sum()


def _without_bias_change(candidate: SelfHealingNet, served: SelfHealingNet) -> SelfHealingNet:
    clone = candidate.copy()
    with torch.no_grad():
        clone.adapter.logit_bias.copy_(served.adapter.logit_bias)
    return clone
