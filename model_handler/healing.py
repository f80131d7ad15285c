"""Label-free healing: diagnose the drift, apply the cheapest fix that explains it, gate the result.

The Job, the benchmark and any other caller use `heal()`; nothing else implements healing.

Cheapest fix first:
1. Recalibration. A feature whose recent quantiles are an affine map of the training quantiles,
   increasing (a unit change, inflation) or decreasing (a reflection: an upstream PCA refit that
   flipped a component's sign), is mapped back by the adapter's input recalibration. Analytic, no
   training. From then on rules read the inputs mapped back into training units.
2. Prior correction. The class prior is estimated on the recalibrated model by EM on probabilities
   calibrated with bias-corrected temperature scaling, with a bootstrap interval, and by BBSE
   (model_handler.labelshift); a change whose interval excludes the old prior becomes the adapter's
   logit bias. It does not depend on the rules.
3. Adapter training. If trusted rules still conflict with the predictions beyond their training-time
   rate, the residual adapter is trained on the recent rows: rule votes as weak labels, anchored
   to the model after steps 1-2 (KL), entropy minimisation only on confident rows (EATA-style
   filtering), a class-balance term on the predicted marginal, an L2 pull to the last good
   adapter, and a reset if the predictions collapse. Delayed labels, if given, add a
   cross-entropy term on the labelled rows.
Rule trust: a rule declared a `definition` is always trusted. A heuristic's trust is its training-
time precision; for adapter training it falls where the recalibrated model disputes the rule on
ground the training data covered (`rule_trust`). It never falls because the rule's inputs moved.
The gate weighs rules as evidence by their precision alone: a rule the model disputes still
testifies against a candidate (a disputed rule that refuted a prior correction must keep its say).
The promotion gate (model_handler.gate) judges every fix on held-out recent rows no step saw, and
gives the verdict: promote, approve (safe but without independent evidence) or reject.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from model_handler.drift import drift_scores
from model_handler import labelshift
from model_handler.gate import GateConfig, GateReport, evaluate_gate, input_psi
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
    affine_min_shift: float = 0.3       # in reference standard deviations
    affine_min_log_scale: float = 0.25  # |log| of the scale change (about x1.3)
    affine_min_r2: float = 0.97         # quantile-quantile fit quality: a *shape* change is not affine
    reflection_min_gain: float = 0.02   # a decreasing map must fit this much better (r2) than an increasing one
    # 2. prior correction
    prior_min_ratio: float = 1.5        # estimated / assumed class rate, any class
    prior_min_delta: float = 0.005      # and at least this far apart in absolute terms (1% -> 3% counts)
    prior_bootstraps: int = 40          # bootstrap draws for the prior's interval
    prior_hedge: float = 0.25           # share of traffic expected to keep following the training prior
    # 3. adapter training
    min_trust: float = 0.5              # heuristics less precise than this at training time abstain
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
    estimate: dict = field(default_factory=dict)   # label-free accuracy estimate, before and after
    # The candidate's predicted class shares on the held-out rows: what the gate certified, and what
    # the rollback watch expects live (a heal that finds new fraud raises the fraud rate on purpose).
    class_rates: list[float] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """promote | approve (safe, no independent evidence: a person decides) | reject | nothing."""
        if self.candidate is None or self.gate is None:
            return "nothing"
        return self.gate.verdict

    @property
    def evidence(self) -> list[str]:
        return self.gate.evidence if self.gate is not None else []

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
                "verdict": self.verdict, "evidence": self.evidence, "estimate": self.estimate,
                "reason": self.reason, "labels_used": self.labels_used,
                "gate": self.gate.to_dict() if self.gate else None}


# ---- 1. recalibration ------------------------------------------------------------------------

# Factors between units that upstream systems actually switch between. Powers of ten (cents,
# metres, grams, milliseconds) are far apart, so a fitted scale within a factor 1.5 of one is taken
# as exact (a window of one part of the day fits a noisy scale: 77 for a x100 change); the others
# (minutes, hours, days, KiB) only within UNIT_SNAP.
DECIMAL_FACTORS = (10.0, 100.0, 1000.0, 1e4, 1e6)
DECIMAL_SNAP = float(np.log(1.5))
UNIT_FACTORS = (60.0, 3600.0, 86400.0, 1024.0)
UNIT_SNAP = 0.05


def snap_unit_change(model: SelfHealingNet, j: int, shift: float, scale: float) -> tuple[float, float, float | None]:
    """A z-space affine fit of feature j, replaced by the exact map of a plain unit change x -> F x
    when the fit is within UNIT_SNAP of one (returns F, else None): the fit is made on a window
    of noisy quantiles, the upstream change is exact, and point masses (a price of exactly 1.00)
    must land in the same bins as in training. On a log-scaled feature the exact map is no z-space
    one: it returns the identity (0, 1) with F, which `apply_recalibration` puts in the adapter's
    raw-space `input_unit`."""
    mean, std = float(model.norm_mean[j]), float(model.norm_std[j])
    if bool(model.log_mask[j]):
        # log1p(F x) ~ log1p(x) + log F for the bulk of a heavy-tailed feature: a shift, scale ~1
        if abs(np.log(scale)) > DECIMAL_SNAP:
            return shift, scale, None
        factor = float(np.exp(shift * std))
    else:
        # x_now = a + b x_ref with b = scale, a = mean (1 - scale) + std shift; a plain unit change has
        # a ~ 0 (a noisy window leaves some offset: up to a quarter of the feature's spread)
        a = mean * (1 - scale) + std * shift
        if abs(a) > 0.25 * abs(scale) * max(abs(mean), std):
            return shift, scale, None
        factor = scale
    for f, tolerance in [*((f, DECIMAL_SNAP) for f in DECIMAL_FACTORS), *((f, UNIT_SNAP) for f in UNIT_FACTORS)]:
        for candidate in (f, 1.0 / f):
            if abs(np.log(factor / candidate)) <= tolerance:
                if bool(model.log_mask[j]):
                    return 0.0, 1.0, candidate
                return float((candidate - 1.0) * mean / std), float(candidate), candidate
    return shift, scale, None


def reflected_by_ranks(model: SelfHealingNet, x: np.ndarray, j: int, min_corr: float = 0.15) -> bool | None:
    """Do feature j's rank correlations with the other features say it was reflected? True when
    they fit the training ones with their signs flipped far better than as they were (on at least
    two informative pairs), False when clearly not, None when no pair is informative."""
    reference = np.asarray(model.spec.rank_correlation)
    if reference.size == 0 or len(x) < 100:
        return None
    from model_handler.training import rank_correlation
    others = [k for k in range(reference.shape[0]) if k != j and abs(reference[j, k]) >= min_corr]
    if len(others) < 2:
        return None
    now = rank_correlation(np.asarray(x, dtype=np.float64)[:, [j, *others]])[0, 1:]
    ref = reference[j, others]
    kept, flipped = float(((now - ref) ** 2).sum()), float(((now + ref) ** 2).sum())
    return flipped * 2 < kept


def diagnose_affine(model: SelfHealingNet, x: torch.Tensor,
                    config: HealConfig) -> dict[int, tuple[float, float, float, float, str]]:
    """Per feature j: (shift, scale, r2, sign, kind) where recent z-quantiles ~= shift + scale * reference
    ones (sign +1), or shift - scale * reflected reference ones (sign -1: the feature was flipped).

    Quantiles are taken of the recalibrated inputs as served now, so a second unit change on top
    of a first one composes correctly. Features with few distinct values are skipped. An
    increasing map is fitted on the central quantiles (20%..80%) only, so a few rows from before
    the change (a window's edge) or a minority class cannot bend it, and snapped to an exact unit
    change where it is one. A reflection is decided by the feature's rank correlations with the
    others where they are informative (a flip reverses them all), else by its tails (a skewed
    feature's long tail changes side). A symmetric feature that correlates with nothing shows no
    reflection in unlabeled data, and none is claimed.
    """
    ref = np.asarray(model.spec.reference_quantiles)
    if ref.size == 0:
        return {}
    with torch.no_grad():
        z = model.recalibrated(x).numpy()
    restored = model.restore_inputs(x.numpy() if isinstance(x, torch.Tensor) else x)
    now = np.quantile(z, QUANTILES, axis=0).T
    central = (QUANTILES >= 0.2 - 1e-9) & (QUANTILES <= 0.8 + 1e-9)
    found = {}
    for j in range(z.shape[1]):
        r, c = ref[j], now[j]
        use = central
        if len(np.unique(r)) < 10 and r[0] == r[1]:
            # a point mass (zero-inflated: 0 in half the rows): fit the continuous part above it
            use = (r > r[0] + 1e-9) & (c > c[0] + 1e-9)
            if len(np.unique(r[use])) < 6 or len(np.unique(c[use])) < 6:
                continue
            r_use, c_use = r[use], c[use]
            scale, shift = np.polyfit(r_use, c_use, 1)
            residual = c_use - (shift + scale * r_use)
            r2 = 1.0 - residual.var() / max(c_use.var(), 1e-12)
            big = abs(shift) >= config.affine_min_shift or abs(np.log(max(scale, 1e-12))) >= config.affine_min_log_scale
            if scale > 0 and big and r2 >= config.affine_min_r2:
                found[j] = unit_or_affine(model, j, shift, scale, r2)
            continue
        if len(np.unique(r)) < 10 or np.std(r) < 1e-6:
            continue
        fits = {}
        for sign, rr, cc in ((1.0, r[central], c[central]), (1.0, r, c), (-1.0, -r[::-1], c)):
            scale, shift = np.polyfit(rr, cc, 1)
            residual = cc - (shift + scale * rr)
            fits.setdefault(sign, []).append((float(shift), float(scale),
                                              1.0 - residual.var() / max(cc.var(), 1e-12)))
        (shift, scale, r2), (_, _, r2_all) = fits[1.0]
        flip_shift, flip_scale, flip_r2 = fits[-1.0][0]
        by_ranks = reflected_by_ranks(model, restored, j)
        by_tails = flip_r2 > r2_all + config.reflection_min_gain
        if flip_scale > 0 and flip_r2 >= config.affine_min_r2 and (by_ranks if by_ranks is not None else by_tails):
            found[j] = (flip_shift, flip_scale, flip_r2, -1.0, "reflection" + (" (rank correlations flipped)"
                                                                           if by_ranks else " (tails)"), 1.0)
            continue
        if scale <= 0:
            continue
        big = abs(shift) >= config.affine_min_shift or abs(np.log(scale)) >= config.affine_min_log_scale
        if big and r2 >= config.affine_min_r2:
            found[j] = unit_or_affine(model, j, shift, scale, r2)
    return found


def unit_or_affine(model: SelfHealingNet, j: int, shift: float, scale: float, r2: float) -> tuple:
    """A diagnosed increasing map: (shift, scale, r2, 1.0, kind, unit), unit = the raw-space factor
    of an exact unit change on a log-scaled feature (else 1.0, the change is made in z-space)."""
    shift, scale, factor = snap_unit_change(model, j, shift, scale)
    unit = factor if factor and bool(model.log_mask[j]) else 1.0
    return shift, scale, r2, 1.0, f"unit change x{factor:g}" if factor else "affine", unit


def apply_recalibration(model: SelfHealingNet, found: dict[int, tuple]) -> None:
    """Compose u' = sign * (u - shift) / scale with the adapter's current recalibration
    u = (z - s0) * exp(-l0) * g0 (g0 = +-1): s = s0 + shift * g0 * exp(l0), l = l0 + log(scale),
    g = g0 * sign. A raw-space unit factor multiplies `input_unit`: applied before the transform,
    it undoes the newest upstream change first, whatever maps an earlier heal made."""
    a = model.adapter
    with torch.no_grad():
        for j, (shift, scale, _, sign, _, unit) in found.items():
            a.input_unit[j] = a.input_unit[j] * unit
            a.input_shift[j] = a.input_shift[j] + shift * a.input_sign[j] * torch.exp(a.input_log_scale[j])
            a.input_log_scale[j] = a.input_log_scale[j] + float(np.log(scale))
            a.input_sign[j] = a.input_sign[j] * sign


# ---- 2. prior correction ---------------------------------------------------------------------

def prior_changed(estimated: np.ndarray, assumed: np.ndarray, config: HealConfig) -> bool:
    ratio = np.maximum(estimated, 1e-6) / np.maximum(assumed, 1e-6)
    far = np.abs(estimated - assumed) >= config.prior_min_delta
    return bool(np.any(far & ((ratio >= config.prior_min_ratio) | (ratio <= 1 / config.prior_min_ratio))))


def hedged_prior(estimated: np.ndarray, train_prior: np.ndarray, hedge: float) -> np.ndarray:
    """The prior a correction serves: that of traffic of which a share `hedge` still follows the
    training prior and the rest the estimated one. Under a label shift p(x | y) is the same in both,
    so the Bayes decision for the mix is the prior correction to the mixed prior. A fraud wave that
    passes leaves the old traffic: served for the wave alone (hedge 0), the model loses 0.5-0.8
    accuracy points on it in half the bench's seeds (fraud_prior_shift, 10 seeds); hedged at 0.25
    or 0.33 the worst loss is 0.46 or 0.39 points, and 89-90% of the wave's accuracy gain stays.
    Set 0 where the new prior is known to stay."""
    if not 0.0 <= hedge <= 1.0:
        raise ValueError(f"prior_hedge must be in [0, 1], got {hedge}")
    mixed = hedge * np.asarray(train_prior, dtype=np.float64) + (1.0 - hedge) * np.asarray(estimated, dtype=np.float64)
    return mixed / mixed.sum()


def prior_correction(model: SelfHealingNet, new: np.ndarray, assumed: np.ndarray) -> np.ndarray:
    """The raw-logit bias change that serves prior `new`. The prior was estimated on calibrated
    probabilities (softmax(z / T + b)), so the corrected decision is argmax(z / T + b + log(new /
    assumed)), i.e. z + T * (b + log(new / assumed)) on raw logits. The calibration bias b enters
    once: with the first correction (none recorded yet), not again when a correction is corrected.
    Leaving b out served a threshold tuned for neither prior (fraud_prior_shift: held-out accuracy
    0.9649 vs 0.9658, clean 0.9838 vs 0.9862 on seed 0)."""
    temperature = model.spec.calibration_temperature or 1.0
    delta = np.log(np.maximum(new, 1e-6) / np.maximum(assumed, 1e-6))
    bias = model.spec.calibration_bias
    if not model.adapter.class_prior.detach().any() and bias:
        delta = delta + np.asarray(bias, dtype=np.float64)
    return temperature * delta


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

COVERED_FIRINGS = 50   # training firings at which a rule's region counts as half covered by labelled data


def rule_trust(model: SelfHealingNet, x: np.ndarray, rules: RuleSet,
               reference: ReferenceProfile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per rule: trust in [0, 1] for adapter training, its input PSI on these rows after the model's
    recalibration (reported, not used: rules read the inputs mapped back into training units), and
    its trust as the gate's evidence (1 for a definition, else the training-time precision).

    A `definition` holds whatever the traffic does: trust 1. A heuristic starts from its training-
    time precision (1 - its smoothed conflict share) and does not lose trust because its inputs
    moved: a covariate shift leaves a correct rule correct, and a new pattern (card testing) moves
    exactly the inputs of the rule written for it (trust decayed with the input PSI silenced that
    rule and kept fraud_new_pattern under 80%). It loses trust where the recalibrated model, which
    learnt from labels, now disputes it on ground it knows: in proportion to the rule's excess
    conflict share (beyond its training-time share and noise, of what its precision leaves) times
    how well training data covered the rule's region (`covered`, ref firings / (ref firings + 50)).
    A rule that went stale where the model saw labelled rows (late-night online orders) is
    disputed there; a rule for a pattern the training data never had (tiny card-testing amounts,
    nearly no training firings) is the only evidence there and keeps its precision."""
    restored = model.restore_inputs(x)
    sketch = DriftSketch.empty(reference, len(rules))
    sketch.update(restored, model.predict_proba(x).numpy(), rules.fires(restored).numpy(), rules.labels.numpy())
    scores = drift_scores(sketch, reference, rules, min_samples=0)
    psi = np.array([r.input_psi for r in scores.rules])
    precision = np.array([1.0 - r.reference_conflict_rate for r in scores.rules])
    disputed = np.clip(np.array([r.excess for r in scores.rules]) / np.maximum(precision, 1e-6), 0.0, 1.0)
    ref_fires = (reference.counts.counters["rule_fires"].astype(np.float64) if scores.reference_rules_match
                 else np.zeros(len(rules)))
    covered = ref_fires / (ref_fires + COVERED_FIRINGS)
    evidence = np.where(rules.definitions, 1.0, precision)
    return np.where(rules.definitions, 1.0, precision * (1.0 - covered * disputed)), psi, evidence


def calibrated_probs(model: SelfHealingNet, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """The model's probabilities after its bias-corrected temperature scaling (identity if none).
    A prior correction already holds T * b in the logit bias (see prior_correction): b is not
    added twice."""
    with torch.no_grad():
        logits = model(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
    corrected = bool(model.adapter.class_prior.detach().any())
    return labelshift.calibrated(logits, model.spec.calibration_temperature or 1.0,
                                 None if corrected else model.spec.calibration_bias)


def estimate_accuracy(model: SelfHealingNet, x: np.ndarray, expected_prior: np.ndarray,
                      max_input_psi: float = 0.25) -> tuple[float | None, str]:
    """Label-free accuracy estimate (CBPE-style: mean calibrated confidence), or None with the
    reason where its assumptions visibly fail: inputs still far from the training data (confidence
    then says nothing: a model that flags everything after a unit change is sure and wrong), or
    class rates far from any prior the evidence supports."""
    shift = input_psi(model, torch.as_tensor(x, dtype=torch.float32))
    if shift > max_input_psi:
        return None, f"inputs still far from the training data (mean PSI {shift:.2f}): confidence is not accuracy"
    probs = calibrated_probs(model, x)
    rates = np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs)
    ratio = np.maximum(rates, 1e-6) / np.maximum(expected_prior, 1e-6)
    if np.any((ratio > 3) & (rates > 0.05)) or np.any(ratio < 1 / 3):
        return None, (f"predicted class rates {np.round(rates, 3).tolist()} are implausible for the prior "
                      f"{np.round(expected_prior, 3).tolist()}")
    return float(probs.max(1).mean()), "mean calibrated confidence (CBPE)"


def prune_recalibration(served: SelfHealingNet, found: dict[int, tuple], x_hold: np.ndarray, rules: RuleSet,
                        reference: ReferenceProfile, config: HealConfig,
                        x_all: np.ndarray | None = None) -> tuple[dict[int, tuple], dict[str, list]]:
    """Keep the features whose own held-out evidence does not refute their map. Features move for
    different reasons at once (a unit change next to a natural drift of the population): one
    refuted map must not sink the others, and must not ship either."""
    dropped: dict[str, list] = {}
    trusted = np.zeros(len(rules), dtype=bool)   # witnesses are judged with the whole candidate

    def judged(maps: dict[int, tuple]) -> GateReport:
        trial = served.copy()
        apply_recalibration(trial, maps)
        return evaluate_gate(served, trial, trial, x_hold, rules, trusted, reference, trial.served_prior(),
                             ["recalibrate"], config.gate, recalibrated={j: v[4] for j, v in maps.items()},
                             x_unfitted=x_all)

    report = None
    for _ in range(len(found)):
        if not found:
            break
        report = judged(found)
        refuted = {}
        for j in found:
            name = served.spec.features[j]
            failed = [c.name.split("[")[0] for c in report.checks if not c.passed and c.name.endswith(f"[{name}]")]
            if failed:
                refuted[j] = failed
        if not refuted:
            break
        for j, failed in refuted.items():
            dropped[served.spec.features[j]] = failed
            del found[j]
        report = None
    if found and (report or judged(found)).failed:
        # The maps stand one by one but the model they make together is unsafe: keep only the
        # exact unit changes, the maps least likely to be a population that moved.
        units = {j: v for j, v in found.items() if v[4].startswith("unit change")}
        if not units or judged(units).failed:
            units = {}
        for j in set(found) - set(units):
            dropped[served.spec.features[j]] = ["unsafe together: " + ", ".join((report or judged(found)).failed)]
        found = units
    return found, dropped


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
    candidate = model.copy()
    steps: list[str] = []
    diagnosis: dict = {"rows": len(x_recent), "fit_rows": len(fit), "holdout_rows": n_hold}
    train_prior = np.asarray(model.spec.train_prior, dtype=np.float64)

    found = diagnose_affine(candidate, x_fit, config)
    x_hold = x_recent[hold]
    found, dropped = prune_recalibration(served, found, x_hold, rules, reference, config, x_recent)
    if dropped:
        diagnosis["recalibration_refused"] = dropped
    diagnosis["recalibrated_features"] = {model.spec.features[j]: {"shift": s, "scale": k, "r2": r, "sign": g,
                                                                   "kind": kind, "unit": u}
                                          for j, (s, k, r, g, kind, u) in found.items()}
    if found:
        apply_recalibration(candidate, found)
        steps.append("recalibrate")
    stages = [(list(steps), candidate.copy())]  # each fix on top of the previous: cheapest first

    assumed = candidate.served_prior()
    estimate = labelshift.estimate(calibrated_probs(candidate, x_fit), assumed,
                                   np.asarray(model.spec.confusion) if model.spec.confusion else None,
                                   bootstraps=config.prior_bootstraps, seed=config.seed)
    diagnosis["prior"] = {"assumed": assumed.round(4).tolist(), **estimate.to_dict()}
    expected_prior = assumed
    prior_estimate = None
    if prior_changed(estimate.em, assumed, config) and estimate.excludes_source().any():
        serve = hedged_prior(estimate.nearest(assumed), train_prior, config.prior_hedge)
        with torch.no_grad():
            candidate.adapter.logit_bias += torch.as_tensor(prior_correction(candidate, serve, assumed),
                                                            dtype=torch.float32)
            candidate.adapter.class_prior.copy_(torch.as_tensor(serve, dtype=torch.float32))
        diagnosis["prior"]["served"] = serve.round(4).tolist()
        steps.append("prior")
        expected_prior, prior_estimate = estimate.em, estimate
        stages.append((list(steps), candidate.copy()))
    cheap_fixed = candidate.copy()

    # Trust is judged against the recalibrated model before any prior step: a prior correction
    # changes predictions on purpose, and rules disputing it are evidence about it, not against the
    # rules (elec2: judged after the prior, the rules that refute it looked disputed and lost their say).
    trust, rule_psi, evidence_trust = rule_trust(stages[0][1], x_recent[fit], rules, reference)
    ref_conflict_rates = (reference.counts.counters["rule_conflicts"] / max(reference.n, 1)
                          if reference.n_rules == len(rules) else np.zeros(len(rules)))
    trusted = trust >= config.min_trust
    witnesses = evidence_trust >= config.min_trust   # the rules the gate hears
    fires_fit = rules.fires(cheap_fixed.restore_inputs(x_recent[fit]))
    pred = cheap_fixed.predict_proba(x_fit).argmax(1)
    conflicts = (fires_fit & (pred[:, None] != rules.labels[None, :])).float().mean(0).numpy()
    # Rules are imperfect: only conflicts beyond each rule's training-time rate call for training.
    excess = float(np.clip(conflicts - ref_conflict_rates, 0, None)[trusted].sum())
    diagnosis["rules"] = {r.name: {"trust": round(float(t), 3), "trusted": bool(ok), "kind": r.kind,
                                   "witness": bool(w),
                                   "input_psi": round(float(ps), 3),
                                   "conflict_rate": round(float(c), 4), "reference": round(float(rc), 4)}
                          for r, t, ok, w, ps, c, rc in zip(rules.rules, trust, trusted, witnesses, rule_psi, conflicts,
                                                         ref_conflict_rates)}
    diagnosis["excess_conflict_rate"] = round(excess, 4)
    if excess >= config.min_conflict or labels_used:
        mask = torch.as_tensor(trusted)
        weights = rules.weights * torch.as_tensor(trust, dtype=torch.float32) * mask
        dist, mass = rule_targets(fires_fit & mask[None, :], rules.labels, weights, len(model.spec.classes))
        diagnosis["training"] = train_adapter(candidate, cheap_fixed, x_fit, dist, mass, config, y_fit)
        steps.append("adapter")

    before, why_before = estimate_accuracy(served, x_hold, served.served_prior() if not prior_estimate
                                           else expected_prior)
    estimator = "CBPE (mean calibrated confidence)"
    if not steps:
        refused = "; ".join(f"{name}: {', '.join(why)}" for name, why in (dropped or {}).items())
        diagnosis["reason"] = ("no fix needed: no input map that its evidence supports"
                               + (f" (refused: {refused})" if refused else "")
                               + f", no supported prior change, trusted rules agree (excess conflict rate {excess:.4f} "
                                 f"< {config.min_conflict})")[:1500]
        return HealResult(None, steps, diagnosis, None, labels_used,
                          {"estimator": estimator, "before": before, "after": None, "note": why_before})

    def judge(model_: SelfHealingNet, steps_: list[str]) -> GateReport:
        return evaluate_gate(served, cheap_fixed, model_, x_hold, rules, witnesses, reference,
                             expected_prior if "prior" in steps_ else assumed, steps_, config.gate,
                             recalibrated={j: v[4] for j, v in found.items()} if "recalibrate" in steps_ else {},
                             x_unfitted=x_recent,
                             prior=prior_estimate if "prior" in steps_ else None)

    def result(model_: SelfHealingNet, steps_: list[str], report: GateReport) -> HealResult:
        after, why_after = estimate_accuracy(model_, x_hold, expected_prior if "prior" in steps_ else train_prior)
        note = "; ".join(f"{when}: {why}" for when, value, why in (("before", before, why_before),
                                                                   ("after", after, why_after)) if value is None)
        pred = model_.predict_proba(x_hold).argmax(1).numpy()
        rates = (np.bincount(pred, minlength=len(model_.spec.classes)) / max(len(pred), 1)).round(5).tolist()
        return HealResult(model_, steps_, diagnosis, report, labels_used,
                          {"estimator": estimator, "before": before, "after": after,
                           "note": note or "both estimates stand"}, rates)

    report = judge(candidate, steps)
    if not report.passed:
        # If the full candidate is refused, the cheaper fixes under it may still stand on their own:
        # try them from the most to the least complete; the first the gate does not refuse wins.
        diagnosis["refused"] = {"+".join(steps): report.failed}
        for stage_steps, stage_model in reversed(stages):
            if not stage_steps or stage_steps == steps:
                continue
            stage_report = judge(stage_model, stage_steps)
            if stage_report.passed:
                return result(stage_model, stage_steps, stage_report)
            diagnosis["refused"]["+".join(stage_steps)] = stage_report.failed
    return result(candidate, steps, report)
