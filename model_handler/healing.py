"""Label-free healing: diagnose the drift, apply the cheapest fix that explains it, gate the result.

The Job, the benchmark and any other caller use `heal()`; nothing else implements healing.

Cheapest fix first:
1. Recalibration. A feature whose recent quantiles are an affine map of the training quantiles
   (same shape, moved or scaled: a unit change, inflation) is mapped back by the adapter's input
   recalibration. Analytic, no training.
2. Prior correction. The class prior is re-estimated by EM (Saerens et al. 2002) on the
   recalibrated model; a clear change becomes the adapter's logit bias.
3. Adapter training. If trusted rules (those whose inputs did not drift) still conflict with the
   predictions, the residual adapter is trained on the recent rows: rule votes as weak labels,
   anchored to the model after steps 1-2 (KL), entropy minimisation only on confident rows
   (EATA-style filtering), a class-balance term on the predicted marginal, an L2 pull to the last
   good adapter, and a reset if the predictions collapse. Delayed labels, if given, add a
   cross-entropy term on the labelled rows.
Each step is judged by the promotion gate on held-out recent rows no step saw.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from model_handler.drift import drift_scores
from model_handler.gate import GateConfig, GateReport, _implied_prior, evaluate_gate
from model_handler.model import SelfHealingNet
from model_handler.rules import RuleSet
from model_handler.sketches import DriftSketch, ReferenceProfile
from model_handler.training import QUANTILES


@dataclass
class HealConfig:
    holdout_fraction: float = 0.3       # recent rows kept for the gate, never trained on
    min_rows: int = 200
    seed: int = 0
    # 1. recalibration
    affine_min_shift: float = 0.5       # in reference standard deviations
    affine_min_log_scale: float = 0.4   # |log| of the scale change (about x1.5)
    affine_min_r2: float = 0.97         # quantile-quantile fit quality: a *shape* change is not affine
    # 2. prior correction
    prior_min_ratio: float = 1.5        # estimated / assumed class rate, any class
    prior_min_delta: float = 0.02       # and at least this far apart in absolute terms
    em_iterations: int = 100
    # 3. adapter training
    min_trust: float = 0.5              # rules whose inputs drifted more than this abstain
    trust_psi_scale: float = 0.36       # trust = exp(-PSI / scale): 0.5 at PSI 0.25, a "major shift"
    min_conflict: float = 0.01          # trusted-rule conflict rate (share of rows) worth training for
    epochs: int = 150                   # full-batch steps
    lr: float = 0.02
    rule_weight: float = 2.0
    anchor_weight: float = 1.0
    entropy_weight: float = 0.1
    entropy_margin: float = 0.4         # x ln C: EATA's confident-sample filter
    balance_weight: float = 1.0
    l2_weight: float = 1e-3
    label_weight: float = 1.0
    gate: GateConfig = field(default_factory=GateConfig)


@dataclass
class HealResult:
    candidate: SelfHealingNet | None    # None when nothing needed fixing
    steps: list[str]                    # applied fixes, cheapest first
    diagnosis: dict                     # what was measured (JSON-safe)
    gate: GateReport | None
    labels_used: int = 0

    @property
    def promotable(self) -> bool:
        return self.candidate is not None and self.gate is not None and self.gate.passed

    @property
    def reason(self) -> str:
        if self.candidate is None:
            return self.diagnosis.get("reason", "no fix applied")
        return f"{'+'.join(self.steps)}: {self.gate.summary()}"

    def to_dict(self) -> dict:
        return {"steps": self.steps, "diagnosis": self.diagnosis, "promotable": self.promotable,
                "reason": self.reason, "labels_used": self.labels_used,
                "gate": self.gate.to_dict() if self.gate else None}


# ---- 1. recalibration ------------------------------------------------------------------------

def diagnose_affine(model: SelfHealingNet, x: torch.Tensor, config: HealConfig) -> dict[int, tuple[float, float, float]]:
    """Per feature j: (shift, scale, r2) where recent z-quantiles ~= shift + scale * reference ones.

    Quantiles are taken of the recalibrated inputs as served now, so a second unit change on top
    of a first one composes correctly. Features with few distinct values are skipped. The fit uses
    the central quantiles (20%..80%) only, so a few rows from before the change (a window's edge)
    or a minority class cannot bend it.
    """
    ref = np.asarray(model.spec.reference_quantiles)
    if ref.size == 0:
        return {}
    with torch.no_grad():
        z = model.adapter.recalibrate(model.transform(x)).numpy()
    now = np.quantile(z, QUANTILES, axis=0).T
    central = (QUANTILES >= 0.2 - 1e-9) & (QUANTILES <= 0.8 + 1e-9)
    found = {}
    for j in range(z.shape[1]):
        r, c = ref[j][central], now[j][central]
        if len(np.unique(r)) < 10 or np.std(r) < 1e-6:
            continue
        scale, shift = np.polyfit(r, c, 1)
        if scale <= 0:
            continue
        residual = c - (shift + scale * r)
        r2 = 1.0 - residual.var() / max(c.var(), 1e-12)
        big = abs(shift) >= config.affine_min_shift or abs(np.log(scale)) >= config.affine_min_log_scale
        if big and r2 >= config.affine_min_r2:
            found[j] = (float(shift), float(scale), float(r2))
    return found


def apply_recalibration(model: SelfHealingNet, found: dict[int, tuple[float, float, float]]) -> None:
    """Compose z' = (z_now - shift) / scale with the adapter's current recalibration."""
    a = model.adapter
    with torch.no_grad():
        for j, (shift, scale, _) in found.items():
            # current: u = (z - s0) * exp(-l0); new: (u - shift) / scale
            a.input_shift[j] = a.input_shift[j] + shift * torch.exp(a.input_log_scale[j])
            a.input_log_scale[j] = a.input_log_scale[j] + float(np.log(scale))


# ---- 2. prior correction ---------------------------------------------------------------------

def estimate_prior_em(probs: torch.Tensor, assumed: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Saerens-Latinne-Decaestecker EM: the class prior that best explains unlabeled rows."""
    p = probs.double().numpy()
    prior = assumed.copy()
    for _ in range(iterations):
        w = p * (prior / assumed)
        w /= w.sum(1, keepdims=True)
        new = w.mean(0)
        if np.abs(new - prior).max() < 1e-7:
            prior = new
            break
        prior = new
    return prior


def prior_changed(estimated: np.ndarray, assumed: np.ndarray, config: HealConfig) -> bool:
    ratio = np.maximum(estimated, 1e-6) / np.maximum(assumed, 1e-6)
    far = np.abs(estimated - assumed) >= config.prior_min_delta
    return bool(np.any(far & ((ratio >= config.prior_min_ratio) | (ratio <= 1 / config.prior_min_ratio))))


# ---- 3. adapter training ---------------------------------------------------------------------

def rule_targets(fires: torch.Tensor, rule_labels: torch.Tensor, weights: torch.Tensor,
                 n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the weighted vote of the firing rules (a distribution) and the vote's total weight."""
    votes = torch.zeros(fires.shape[0], n_classes)
    onehot = torch.nn.functional.one_hot(rule_labels, n_classes).float()          # [R, C]
    votes += (fires.float() * weights[None, :]) @ onehot
    total = votes.sum(1)
    dist = votes / total.clamp_min(1e-12)[:, None]
    return dist, total


def train_adapter(model: SelfHealingNet, anchor: SelfHealingNet, x: torch.Tensor, rule_dist: torch.Tensor,
                  rule_mass: torch.Tensor, config: HealConfig, labels: torch.Tensor | None = None) -> dict:
    """Train the residual adapter and logit bias of `model` in place; returns training facts."""
    torch.manual_seed(config.seed)
    a = model.adapter
    params = [a.down.weight, a.down.bias, a.up.weight, a.up.bias, a.logit_bias]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    start = {k: v.detach().clone() for k, v in a.named_parameters()}
    with torch.no_grad():
        p_anchor = anchor.predict_proba(x)
        confident = (-(p_anchor * p_anchor.clamp_min(1e-12).log()).sum(1)
                     < config.entropy_margin * np.log(p_anchor.shape[1]))
        alpha = rule_mass.clamp(max=1.0)[:, None]
        target = alpha * rule_dist + (1 - alpha) * p_anchor
        target_marginal = target.mean(0)
        has_rule = rule_mass > 0
        row_weight = torch.where(has_rule, torch.full_like(rule_mass, config.rule_weight),
                                 torch.full_like(rule_mass, config.anchor_weight))
    optimiser = torch.optim.Adam(params, lr=config.lr)
    for _ in range(config.epochs):
        optimiser.zero_grad()
        log_p = torch.log_softmax(model(x), 1)
        p = log_p.exp()
        fit = -(row_weight * (target * log_p).sum(1)).sum() / row_weight.sum()
        entropy = -(p * log_p).sum(1)
        ent = entropy[confident & ~has_rule].mean() if (confident & ~has_rule).any() else torch.tensor(0.0)
        marginal = p.mean(0)
        balance = (target_marginal * (target_marginal.clamp_min(1e-12).log()
                                      - marginal.clamp_min(1e-12).log())).sum()
        l2 = sum(((param - start[name]) ** 2).sum() for name, param in a.named_parameters()
                 if param.requires_grad)
        loss = fit + config.entropy_weight * ent + config.balance_weight * balance + config.l2_weight * l2
        if labels is not None:
            known = labels >= 0
            if known.any():
                loss = loss + config.label_weight * torch.nn.functional.nll_loss(log_p[known], labels[known])
        loss.backward()
        optimiser.step()
    for p in params:
        p.requires_grad_(False)
    with torch.no_grad():
        pred = model(x).argmax(1)
        rates = torch.bincount(pred, minlength=p_anchor.shape[1]).float() / len(pred)
    collapsed = bool((rates == 0).any() and (target_marginal > 0.005).all())
    if collapsed:  # SAR-style reset: never hand a collapsed adapter to the gate
        a.load_state_dict({**a.state_dict(), **{k: v for k, v in start.items()}})
    return {"collapsed_and_reset": collapsed, "predicted_rates": rates.tolist(),
            "target_rates": target_marginal.tolist(), "rule_rows": int(has_rule.sum())}


# ---- the whole heal ------------------------------------------------------------------------

def rule_facts(model: SelfHealingNet, x: np.ndarray, rules: RuleSet, reference: ReferenceProfile,
               psi_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per rule: trust in [0, 1] on these rows (weight-free; low when the rule's inputs drifted),
    and the rule's firing and conflict rates (per row) on the training data."""
    sketch = DriftSketch.empty(reference, len(rules))
    sketch.update(x, model.predict_proba(x).numpy(), rules.fires(x).numpy(), rules.labels.numpy())
    scores = drift_scores(sketch, reference, rules, psi_scale=psi_scale)
    trust = np.array([r.trust / max(rule.weight, 1e-9) for r, rule in zip(scores.rules, rules.rules)])
    counters, n = reference.counts.counters, max(reference.n, 1)
    return trust, counters["rule_fires"] / n, counters["rule_conflicts"] / n


def heal(model: SelfHealingNet, x_recent: np.ndarray, rules: RuleSet, reference: ReferenceProfile,
         config: HealConfig = HealConfig(), labels: np.ndarray | None = None) -> HealResult:
    """Build a candidate adapter for `model` (served with its last good adapter) from recent rows.

    reference: the training-time profile shipped with the model (rule rates, feature bins).
    labels: optional delayed labels aligned with x_recent, -1 = unknown (default: none, 0 used).
    """
    x_recent = np.asarray(x_recent, dtype=np.float32)
    n_features = len(model.spec.features)
    if x_recent.ndim != 2 or x_recent.shape[1] != n_features:
        raise ValueError(f"recent rows must have shape [N, {n_features}], got {list(x_recent.shape)}")
    if not np.isfinite(x_recent).all():
        raise ValueError("recent rows contain NaN or inf; drop them before healing")
    if len(x_recent) < config.min_rows:
        raise ValueError(f"need at least {config.min_rows} recent rows to heal, got {len(x_recent)}")
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(x_recent))
    n_hold = int(len(order) * config.holdout_fraction)
    hold, fit = order[:n_hold], order[n_hold:]
    x_fit = torch.as_tensor(x_recent[fit])
    y_fit = None
    labels_used = 0
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(x_recent),):
            raise ValueError(f"labels must align with the recent rows: {labels.shape} vs {len(x_recent)}")
        y_fit = torch.as_tensor(labels[fit])
        labels_used = int((labels[fit] >= 0).sum())

    served = model
    trust, ref_fire_rates, ref_conflict_rates = rule_facts(model, x_recent[fit], rules, reference,
                                                            config.trust_psi_scale)
    candidate = model.copy()
    steps: list[str] = []
    diagnosis: dict = {"rows": len(x_recent), "fit_rows": len(fit), "holdout_rows": n_hold}

    found = diagnose_affine(candidate, x_fit, config)
    diagnosis["recalibrated_features"] = {model.spec.features[j]: {"shift": s, "scale": k, "r2": r}
                                          for j, (s, k, r) in found.items()}
    if found:
        apply_recalibration(candidate, found)
        steps.append("recalibrate")
    stages = [(list(steps), candidate.copy())]  # each fix on top of the previous: cheapest first

    assumed = _implied_prior(candidate)
    estimated = estimate_prior_em(candidate.predict_proba(x_fit), assumed, config.em_iterations)
    diagnosis["prior"] = {"assumed": assumed.round(4).tolist(), "estimated": estimated.round(4).tolist()}
    expected_prior = assumed
    if prior_changed(estimated, assumed, config):
        with torch.no_grad():
            candidate.adapter.logit_bias += torch.as_tensor(np.log(estimated / assumed), dtype=torch.float32)
        steps.append("prior")
        expected_prior = estimated
        stages.append((list(steps), candidate.copy()))
    cheap_fixed = candidate.copy()

    trusted = trust >= config.min_trust
    fires_fit = rules.fires(x_fit)
    pred = cheap_fixed.predict_proba(x_fit).argmax(1)
    conflicts = (fires_fit & (pred[:, None] != rules.labels[None, :])).float().mean(0).numpy()
    # Rules are imperfect: only conflicts beyond each rule's training-time rate call for training.
    excess = float(np.clip(conflicts - ref_conflict_rates, 0, None)[trusted].sum())
    diagnosis["rules"] = {r.name: {"trust": round(float(t), 3), "trusted": bool(ok),
                                   "conflict_rate": round(float(c), 4), "reference": round(float(rc), 4)}
                          for r, t, ok, c, rc in zip(rules.rules, trust, trusted, conflicts, ref_conflict_rates)}
    diagnosis["excess_conflict_rate"] = round(excess, 4)
    if excess >= config.min_conflict or labels_used:
        mask = torch.as_tensor(trusted)
        weights = rules.weights * torch.as_tensor(trust, dtype=torch.float32) * mask
        dist, mass = rule_targets(fires_fit & mask[None, :], rules.labels, weights, len(model.spec.classes))
        diagnosis["training"] = train_adapter(candidate, cheap_fixed, x_fit, dist, mass, config, y_fit)
        steps.append("adapter")

    if not steps:
        diagnosis["reason"] = ("no fix needed: no affine input shift, no prior change, trusted rules agree "
                               f"(excess conflict rate {excess:.4f} < {config.min_conflict})")
        return HealResult(None, steps, diagnosis, None, labels_used)
    x_hold = x_recent[hold]
    fires_hold = rules.fires(torch.as_tensor(x_hold))

    def judge(model_: SelfHealingNet, steps_: list[str]) -> GateReport:
        return evaluate_gate(served, cheap_fixed, model_, x_hold, fires_hold, rules.labels, trusted,
                             ref_fire_rates, expected_prior, steps_, config.gate)

    report = judge(candidate, steps)
    if not report.passed:
        # If the full candidate is refused, the cheaper fixes under it may still stand on their own:
        # try them from the most to the least complete; the first the gate accepts wins.
        diagnosis["refused"] = {"+".join(steps): report.failed}
        for stage_steps, stage_model in reversed(stages):
            if not stage_steps or stage_steps == steps:
                continue
            stage_report = judge(stage_model, stage_steps)
            if stage_report.passed:
                return HealResult(stage_model, stage_steps, diagnosis, stage_report, labels_used)
            diagnosis["refused"]["+".join(stage_steps)] = stage_report.failed
    return HealResult(candidate, steps, diagnosis, report, labels_used)
