"""The promotion gate: a candidate adapter ships automatically only when held-out evidence that its
fixes did not optimise supports each fix, and nothing says it is dangerous.

All checks run on held-out recent traffic that no healing step saw. Each check is either
- **safety** (finite outputs, adapter size, plausible class rates, no entropy collapse, bounded
  disagreement, no new conflicts with trusted rules, a prior correction that explains the held-out
  rows better): any failure refuses the candidate; or
- **evidence** for one fix, measuring something that fix did not optimise:
  - recalibration: the held-out distribution of each mapped feature matches the training one,
    tails included; its rank correlations with the features that did not move are those of the
    training data (a monotone map cannot change ranks, so a pipeline change passes and a change
    of population fails); trusted rules that read none of the mapped features agree as they did;
  - prior correction: the EM interval excludes the old prior, and BBSE (hard predictions and the
    confusion matrix) agrees with EM-BCTS (calibrated probabilities);
  - adapter training: trusted-rule conflicts drop on held-out rows, and its ranking of the rows the
    rules label does not get worse.
  Evidence passes, fails (the fix is refuted: refused) or is not available.
The verdict: `reject` on any failed safety or evidence check; `promote` when every fix has evidence
and none against it; otherwise `approve`: safe, but nothing independent supports it, so a person
decides (`spec.promotion.mode` is not enough to ship it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from typing import Sequence

import numpy as np
import torch

from model_handler.labelshift import PriorEstimate
from model_handler.model import SelfHealingNet
from model_handler.rules import RuleSet
from model_handler.sketches import ReferenceProfile
from model_handler.training import QUANTILES


@dataclass
class GateConfig:
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
    max_adapter_norm: float = 25.0        # L2 norm of the adapter's change from identity (the
                                          # recalibration excluded: a unit change of any size is judged
                                          # by the evidence, not by how large it is)
    max_mapped_psi: float = 0.1           # held-out PSI of a recalibrated feature vs the training bins
    max_mixture_misfit: float = 0.1       # PSI of a feature against the training classes mixed anew
    min_repair_reflection: float = 0.4    # log(1.5): the same for a reflection its rank correlations support
    min_repair: float = 0.69              # log(2): a plain shift must bring predicted class rates this much
                                          # closer to the training prior than leaving the feature alone
    min_informative_correlation: float = 0.15   # |rank correlation| that makes a feature a witness
    correlation_tolerance: float = 0.05   # plus 3 standard errors (1/sqrt(n)) of rank correlation
    min_witness_fires: int = 20           # firings a rule needs on held-out rows to be a witness
    witness_tolerance: float = 0.05       # extra conflict share a witness rule may show
    rare_class: float = 0.1               # a class rarer than this has no absolute-distance escape


@dataclass
class GateCheck:
    name: str
    value: float
    limit: float
    passed: bool
    detail: str = ""
    kind: str = "safety"     # "safety", or "evidence" for the fix named in `fix`
    fix: str = ""


@dataclass
class GateReport:
    passed: bool                          # no safety or evidence check failed
    checks: list[GateCheck] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    @property
    def evidence(self) -> list[str]:
        """The independent checks that support the candidate, with what they measured."""
        return [f"{c.name}: {c.detail}" if c.detail else c.name
                for c in self.checks if c.kind == "evidence" and c.passed]

    @property
    def unsupported(self) -> list[str]:
        """Fixes without any passed evidence check."""
        return [step for step in self.steps
                if not any(c.kind == "evidence" and c.fix == step and c.passed for c in self.checks)]

    @property
    def verdict(self) -> str:
        if not self.passed:
            return "reject"
        return "approve" if self.unsupported else "promote"

    def summary(self) -> str:
        if not self.passed:
            return "refused: " + "; ".join(f"{c.name} ({c.detail or f'{c.value:.4g} vs limit {c.limit:.4g}'})"
                                           for c in self.checks if not c.passed)
        if self.unsupported:
            return (f"passed {len(self.checks)} checks, but no independent evidence supports "
                    f"{', '.join(self.unsupported)}: awaits approval")
        return f"passed all {len(self.checks)} checks; evidence: {'; '.join(self.evidence)}"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "verdict": self.verdict, "failed": self.failed,
                "evidence": self.evidence, "checks": [asdict(c) for c in self.checks]}


def input_psi(model: SelfHealingNet, x: torch.Tensor) -> float:
    """Mean PSI of the recalibrated, normalised inputs against the training quantile bins.

    Only features with at least 10 distinct reference quantiles (continuous ones) count: for
    those every bin holds 5% of the reference by construction.
    """
    q = np.asarray(model.spec.reference_quantiles)
    if q.size == 0:
        return 0.0
    with torch.no_grad():
        z = model.recalibrated(x).numpy()
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
    """Size of the learned part of the adapter (residual and logit bias). The input recalibration
    is not counted: it undoes an upstream change, whose size says nothing about harm (a x100 unit
    change of a feature that is not log-scaled needs a shift of about 224)."""
    a = model.adapter
    return float(torch.sqrt(a.up.weight.pow(2).sum() + a.up.bias.pow(2).sum() + a.logit_bias.pow(2).sum()))


def _fires(model: SelfHealingNet, rules: RuleSet, x: np.ndarray) -> torch.Tensor:
    """Rule firings on the inputs as `model` sees them, in training units (see restore_inputs)."""
    return rules.fires(model.restore_inputs(x))


def mapped_feature_psi(model: SelfHealingNet, reference: ReferenceProfile, x: np.ndarray, j: int) -> float:
    """PSI of feature j as the model sees it, mapped back into training units, against the training
    data's own bins (deciles, tails in the open-ended outer bins; ties and point masses counted as
    they were)."""
    from model_handler.drift import psi

    restored = model.restore_inputs(x)
    column = restored[:, j]
    counts = np.bincount(np.searchsorted(reference.edges[j], column[np.isfinite(column)], side="right"),
                         minlength=len(reference.edges[j]) + 1)
    ref = reference.counts.feature_counts(j)[:-1]   # the last slot counts non-finite values
    return psi(ref, counts)


def rank_correlation_gaps(model: SelfHealingNet, x: np.ndarray, mapped: Sequence[int],
                          config: GateConfig) -> tuple[dict[int, tuple[float, str]], float]:
    """Per mapped feature: the root-mean-square change, from the training data, of its rank
    correlations with the other features (in training units), over pairs whose training
    correlation is informative. A monotone
    map keeps ranks (a reflection flips them, and is applied here), so a pipeline change leaves
    these as they were, while a change of population (one class moving) does not.
    Real populations also drift in their relations (ULB's second day weakens several): the limit
    adds the median change of the informative pairs of features that were left alone, so a mapped
    feature must keep its relations as well as the untouched ones kept theirs.
    Returns ({feature: (gap, detail)} for features with an informative pair, limit)."""
    reference = np.asarray(model.spec.rank_correlation)
    limit = config.correlation_tolerance + 3.0 / np.sqrt(max(len(x), 1))
    if reference.size == 0 or len(x) < 30 or not len(mapped):
        return {}, limit
    from model_handler.training import rank_correlation
    now = rank_correlation(model.restore_inputs(x))
    others = [k for k in range(reference.shape[0]) if k not in set(mapped)]
    background = [abs(now[k, m] - reference[k, m]) for i, k in enumerate(others) for m in others[i + 1:]
                  if abs(reference[k, m]) >= config.min_informative_correlation]
    if background:
        limit += float(np.median(background))
    gaps = {}
    for j in mapped:
        # every other feature is a witness, mapped ones included: an increasing map keeps ranks, and a
        # reflection is applied in the restored inputs
        pairs = [k for k in range(reference.shape[0])
                 if k != j and abs(reference[j, k]) >= config.min_informative_correlation]
        if not pairs:
            continue
        diffs = np.abs(now[j, pairs] - reference[j, pairs])
        worst = pairs[int(np.argmax(diffs))]
        gaps[j] = (float(np.sqrt(np.mean(diffs ** 2))),
                   f"{model.spec.features[j]}: rms change {np.sqrt(np.mean(diffs ** 2)):.3f} over {len(pairs)} "
                   f"informative pairs; largest vs {model.spec.features[worst]}: {reference[j, worst]:+.2f} in "
                   f"training, {now[j, worst]:+.2f} now")
    return gaps, limit


def class_rate_distance(model: SelfHealingNet, x: torch.Tensor, prior: np.ndarray) -> float:
    """Largest |log| ratio of a predicted class rate to the prior (smoothed by half a row)."""
    pred = model.predict_proba(x).argmax(1).numpy()
    rates = (np.bincount(pred, minlength=len(prior)) + 0.5) / (len(pred) + 0.5 * len(prior))
    return float(np.max(np.abs(np.log(rates / np.asarray(prior)))))


def swap_map(into: SelfHealingNet, source: SelfHealingNet, j: int) -> SelfHealingNet:
    """A copy of `into` with feature j's recalibration taken from `source`."""
    clone = into.copy()
    with torch.no_grad():
        for name in ("input_shift", "input_log_scale", "input_sign", "input_unit"):
            getattr(clone.adapter, name)[j] = getattr(source.adapter, name)[j]
    return clone


def mixture_misfit(model: SelfHealingNet, reference: ReferenceProfile, x: np.ndarray,
                   prior: np.ndarray) -> tuple[float, float, str] | None:
    """Does a pure label shift explain the inputs? Under one, each feature's histogram is the
    training classes' histograms mixed with the new prior. Returns (worst misfit PSI, that
    feature's PSI against the training data, detail), or None without per-class counts. Inputs
    are read as the model sees them, mapped back into training units. Every feature is asked,
    also one the classes share: a population that changed next to the label shift leaves the
    correction unproven (on ULB's second day it refuses every prior correction)."""
    from model_handler.drift import psi

    expected = reference.mixture_bins(prior)
    if expected is None:
        return None
    observed = reference.bin_counts(model.restore_inputs(x))
    training = reference.counts.counters["bins"]
    worst = (0.0, 0.0, "")
    for j, name in enumerate(reference.features):
        lo, hi = reference.offsets[j], reference.offsets[j + 1] - 1   # the last slot counts non-finite values
        misfit = psi(expected[lo:hi] * 1e6, observed[lo:hi])
        if misfit > worst[0]:
            moved = psi(training[lo:hi], observed[lo:hi])
            worst = (misfit, moved, f"{name}: PSI {misfit:.3f} against the classes mixed anew, {moved:.3f} against "
                                    "the training data")
    return worst


def witness_conflicts(model: SelfHealingNet, rules: RuleSet, x: np.ndarray, trusted: np.ndarray,
                      mapped: Sequence[int], baseline_share: np.ndarray,
                      config: GateConfig) -> tuple[float | None, str]:
    """Trusted rules that read none of the mapped features are witnesses the map cannot have bent:
    the largest rise of a witness's conflict share over its training share (None: no witness
    fired often enough)."""
    fires = _fires(model, rules, x)
    pred = model.predict_proba(x).argmax(1)
    mapped_names = {model.spec.features[j] for j in mapped}
    worst, detail = None, "no trusted rule that reads only unmapped features fires often enough"
    for r, rule in enumerate(rules.rules):
        if not trusted[r] or rule.features & mapped_names:
            continue
        f = fires[:, r]
        n = int(f.sum())
        if n < config.min_witness_fires:
            continue
        share = float((pred[f] != rules.labels[r]).float().mean())
        rise = share - float(baseline_share[r]) - 3.0 * np.sqrt(max(baseline_share[r], 0.01) / n)
        if worst is None or rise > worst:
            worst, detail = rise, (f"rule {rule.name}: conflict share {share:.3f} on {n} firings "
                                   f"(training {baseline_share[r]:.3f})")
    return worst, detail


def ranking_auc(scores: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> float | None:
    """P(score of a positive row > score of a negative row); None without both kinds of rows."""
    pos, neg = scores[positive].numpy(), scores[negative].numpy()
    if len(pos) < 5 or len(neg) < 5:
        return None
    from scipy.stats import rankdata
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def evaluate_gate(served: SelfHealingNet, cheap_fixed: SelfHealingNet, candidate: SelfHealingNet,
                  x_holdout: np.ndarray, rules: RuleSet, trusted: np.ndarray, reference: ReferenceProfile,
                  expected_prior: np.ndarray, steps: list[str], config: GateConfig = GateConfig(), *,
                  recalibrated: dict[int, str] | None = None, prior: PriorEstimate | None = None,
                  x_unfitted: np.ndarray | None = None) -> GateReport:
    """Judge `candidate` on held-out rows.

    served: the model as it serves now (last good adapter); cheap_fixed: served + recalibration +
    prior correction (the reference for adapter training); trusted: bool mask of the rules the
    healer trusts; reference: the training-time profile (rule firing and conflict rates);
    expected_prior: the class prior the healer believes in; recalibrated: the feature indices the
    candidate maps, with the kind of change diagnosed ("unit change x100", "reflection ...",
    "affine"); prior: the label-shift estimate behind a prior correction; x_unfitted: more rows
    for evidence that no fix looked at (a map is fitted to input quantiles only, so every recent
    row may judge what it does to the predictions; default: the held-out rows).
    """
    x_np = np.asarray(x_holdout, dtype=np.float32)
    x = torch.as_tensor(x_np)
    checks: list[GateCheck] = []

    def check(name: str, value: float, limit: float, passed: bool, detail: str = "",
              kind: str = "safety", fix: str = "") -> None:
        checks.append(GateCheck(name, float(value), float(limit), bool(passed), detail, kind, fix))

    with torch.no_grad():
        logits = candidate(x)
        finite = bool(torch.isfinite(logits).all())
        check("finite_outputs", float(finite), 1.0, finite, "" if finite else "non-finite logits")
        if not finite:
            return GateReport(False, checks, list(steps))
        p_cand = torch.softmax(logits, 1)
        p_served = served.predict_proba(x)
        p_cheap = cheap_fixed.predict_proba(x)
    pred_cand, pred_served, pred_cheap = p_cand.argmax(1), p_served.argmax(1), p_cheap.argmax(1)
    rule_labels = rules.labels
    n_rules = len(rules)
    baseline_share = ((reference.counts.counters["rule_conflicts"] + 1.0)
                      / (reference.counts.counters["rule_fires"] + 10.0)) if reference.n_rules == n_rules \
        else np.full(n_rules, 0.1)

    norm = adapter_change_norm(candidate)
    check("adapter_norm", norm, config.max_adapter_norm, norm <= config.max_adapter_norm)

    if "recalibrate" in steps:
        prior_now = np.asarray(served.spec.train_prior, dtype=np.float64)
        x_repair = torch.as_tensor(np.asarray(x_unfitted if x_unfitted is not None else x_np, dtype=np.float32))
        mapped_distance = class_rate_distance(candidate, x_repair, prior_now)
        served_distance = class_rate_distance(served, x_repair, prior_now)
        recalibrated = dict(recalibrated or {})
        # PSI of n rows drawn from the training distribution itself is ~ chi2(k - 1) / n: allow for it
        from scipy.stats import chi2
        psi_limit = config.max_mapped_psi + float(chi2.ppf(0.999, 9)) / max(len(x_np), 1)
        for j, kind in recalibrated.items():
            name = candidate.spec.features[j]
            if kind.startswith("unit change"):
                # an exact unit factor: what a pipeline change does and a drifting population does not
                check(f"pipeline_change[{name}]", 1.0, 1.0, True, kind, "evidence", "recalibrate")
            else:
                # A plain shift or scale, or a reflection, may be a population that moved (its model
                # still right: leave it) or a pipeline/price change (its model now wrong): it must
                # repair the predictions.
                # the map's repair on its own, or what the other maps lose without it (two features
                # changed together may each repair only with the other)
                gain = max(served_distance - class_rate_distance(swap_map(served, candidate, j), x_repair, prior_now),
                           class_rate_distance(swap_map(candidate, served, j), x_repair, prior_now) - mapped_distance)
                # a reflection whose rank correlations all reversed has evidence of its own: a lower bar
                need = config.min_repair_reflection if kind.startswith("reflection (rank") else config.min_repair
                check(f"map_repairs_predictions[{name}]", gain, need, gain >= need,
                      f"{kind}: predicted class rates {gain:+.2f} (log ratio) closer to the training prior with "
                      f"the map than without", "evidence", "recalibrate")
            value = mapped_feature_psi(candidate, reference, x_np, j)
            check(f"heldout_distribution_matches[{candidate.spec.features[j]}]", value, psi_limit,
                  value <= psi_limit,
                  f"held-out PSI {value:.3f} against the training bins, tails included", "evidence", "recalibrate")
        gaps, limit = rank_correlation_gaps(candidate, x_np, list(recalibrated), config)
        for j, (gap, detail) in gaps.items():
            check(f"rank_correlations_restored[{candidate.spec.features[j]}]", gap, limit, gap <= limit, detail,
                  "evidence", "recalibrate")
        rise, detail = witness_conflicts(candidate, rules, x_np, trusted, list(recalibrated), baseline_share, config)
        if rise is not None:
            check("untouched_rules_agree", rise, config.witness_tolerance, rise <= config.witness_tolerance,
                  detail, "evidence", "recalibrate")
    if "prior" in steps:
        assumed = served.served_prior()
        # the traffic's prior, which the evidence is about (the candidate may serve a hedged one)
        new = prior.em if prior is not None else candidate.served_prior()
        p_recal = _without_bias_change(candidate, served).predict_proba(x)
        gain = mixture_log_likelihood(p_recal, assumed, new) - mixture_log_likelihood(p_recal, assumed, assumed)
        check("prior_improves_likelihood", gain, config.min_prior_fit_gain,
              gain >= config.min_prior_fit_gain, f"held-out log-likelihood gain {gain:.4f}")
        if prior is not None:
            excluded = prior.excludes_source()
            check("prior_interval_excludes_old_prior", float(excluded.any()), 1.0, bool(excluded.any()),
                  f"EM-BCTS {np.round(prior.em, 4).tolist()}, 95% interval {np.round(prior.em_low, 4).tolist()}"
                  f"..{np.round(prior.em_high, 4).tolist()}, old {np.round(prior.source, 4).tolist()}",
                  "evidence", "prior")
            agree = prior.agree()
            if agree is not None:
                check("label_shift_estimators_agree", float(agree), 1.0, agree,
                      f"BBSE {np.round(prior.bbse, 4).tolist()} vs EM-BCTS {np.round(prior.em, 4).tolist()}",
                      "evidence", "prior")
        misfit = mixture_misfit(candidate, reference, x_np, new)
        if misfit is not None:
            worst, moved, detail = misfit
            # explained: small, or at most half of how far that feature moved from the training data
            ok = worst <= config.max_mixture_misfit or worst <= 0.5 * moved
            check("label_shift_explains_inputs", worst, config.max_mixture_misfit, ok, detail, "evidence", "prior")
        fires_hold = _fires(served, rules, x_np)
        support, limit, detail = prior_rule_support(assumed, new, fires_hold, rule_labels, trusted,
                                                    reference.rule_fire_rates if reference.n_rules == n_rules
                                                    else np.zeros(n_rules), config)
        if "fires often enough" not in detail:   # rules too rare to confirm: no evidence either way
            check("prior_supported_by_rules", support, limit, support >= limit, detail, "evidence", "prior")

    fires_cand = _fires(candidate, rules, x_np)
    conflict_served = trusted_conflict_rate(pred_served, _fires(served, rules, x_np), rule_labels, trusted)
    conflict_cheap = trusted_conflict_rate(pred_cheap, _fires(cheap_fixed, rules, x_np), rule_labels, trusted)
    conflict_cand = trusted_conflict_rate(pred_cand, fires_cand, rule_labels, trusted)
    if "adapter" in steps:
        drop = conflict_cheap - conflict_cand
        check("adapter_reduces_rule_conflicts", drop, config.min_conflict_drop,
              drop >= config.min_conflict_drop, f"held-out trusted-rule conflicts {conflict_cheap:.4f} -> "
                                                f"{conflict_cand:.4f}", "evidence", "adapter")
        disagreement = float((pred_cand != pred_cheap).float().mean())
        check("disagreement_with_recalibrated_model", disagreement, config.max_disagreement,
              disagreement <= config.max_disagreement)
        if p_cand.shape[1] == 2 and trusted.any():
            mask = torch.as_tensor(trusted)
            f = fires_cand[:, mask]
            labels = rule_labels[mask]
            positive, negative = (f & (labels == 1)).any(1), (f & (labels == 0)).any(1)
            before, after = ranking_auc(p_cheap[:, 1], positive, negative), ranking_auc(p_cand[:, 1], positive, negative)
            if before is not None and after is not None:
                check("rule_ranking_kept", after - before, -0.02, after >= before - 0.02,
                      f"AUC of rule-labelled held-out rows {before:.3f} -> {after:.3f}")
    rise = conflict_cand - conflict_served
    # beyond the tolerance and 3 standard errors of the difference: a handful of rows is not a rise
    tolerance = config.conflict_tolerance + 3.0 * np.sqrt((conflict_served + conflict_cand) / max(len(x_np), 1))
    check("no_new_trusted_rule_conflicts", rise, tolerance, rise <= tolerance,
          f"trusted-rule conflicts {conflict_served:.4f} -> {conflict_cand:.4f}")

    counts = np.bincount(pred_cand.numpy(), minlength=p_cand.shape[1])
    n_rows = len(pred_cand)
    rates = counts / n_rows
    worst, worst_detail = 0.0, ""
    plausible = True
    for c, (rate, expected) in enumerate(zip(rates, expected_prior)):
        ratio = max(rate, 1e-6) / max(expected, 1e-6)
        ratio = max(ratio, 1.0 / ratio)
        near = abs(rate - expected) <= config.max_class_rate_delta and expected >= config.rare_class
        # a rare class on a few hundred rows: its count may be far from its rate by chance alone
        low, high = _poisson_range(expected * config.max_class_rate_ratio ** -1 * n_rows), \
            _poisson_range(expected * config.max_class_rate_ratio * n_rows)
        within_noise = low[0] <= counts[c] <= high[1]
        ok = ratio <= config.max_class_rate_ratio or near or within_noise
        if ratio > worst:
            worst, worst_detail = ratio, f"class {c}: predicted rate {rate:.3f}, expected {expected:.3f}"
        plausible &= ok
    check("class_rates_plausible", worst, config.max_class_rate_ratio, plausible, worst_detail)

    ent_cand = float(normalised_entropy(p_cand).mean())
    ent_cheap = float(normalised_entropy(p_cheap).mean())
    ratio = ent_cand / max(ent_cheap, 1e-9)
    # a single predicted class is a collapse only where the others would surely have shown up
    collapsed = len(np.unique(pred_cand.numpy())) < min(2, len(expected_prior)) and \
        float(np.sort(expected_prior)[-2]) * n_rows >= 10
    check("no_entropy_collapse", ratio, config.min_entropy_ratio,
          ratio >= config.min_entropy_ratio and not collapsed,
          "predicts a single class" if collapsed else f"mean entropy {ent_cheap:.3f} -> {ent_cand:.3f}")
    return GateReport(all(c.passed for c in checks), checks, list(steps))


def _poisson_range(mean: float, tail: float = 0.001) -> tuple[int, int]:
    """Counts a Poisson variable with this mean stays within, but for `tail` on each side."""
    from scipy.stats import poisson
    return int(poisson.ppf(tail, mean)), int(poisson.isf(tail, mean))


def _without_bias_change(candidate: SelfHealingNet, served: SelfHealingNet) -> SelfHealingNet:
    clone = candidate.copy()
    with torch.no_grad():
        clone.adapter.logit_bias.copy_(served.adapter.logit_bias)
    return clone
