"""Drift scores for a traffic window, and the hysteresis that turns them into a diagnosis.

Detection is broad and cheap: any of three persistent signals opens a diagnosis (a heal Job), which
decides what, if anything, can be fixed. Promotion, not detection, asks for independent evidence.
- `input`: the largest per-feature PSI against the training bins, significant beyond sampling noise
  (chi-square p-value, Bonferroni over features).
- `label`: a shift of the class prior, estimated from the window's predicted-class counts: BBSE
  (q = C^-1 mu, C = P(predicted | true) on labelled source rows) where the reference has C, else the
  predicted rates themselves. `label_shift` = max over classes of |log(q_c / pi_c)|, significant
  beyond noise (chi-square of the predicted counts against the reference rates).
- `rules`: conflict with trusted rules beyond each rule's training-time conflict rate.
Each signal needs an effect size at or above its threshold AND significance: raw p-values alone
fire on everything once windows are large, effect sizes alone on everything when they are small.

rule_conflict, per rule r with f_r firings and c_r conflicts in the window:
    b_r      = the rule's conflict share on the reference, (conflicts + 1) / (firings + 10): a rule
               that fired only once or twice at training time gets a baseline near the prior
               guess of 10% instead of an arbitrary 0% or 100%
    excess_r = max(0, c_r / f_r - b_r - z * sqrt(b_r (1 - b_r) / f_r))
               (the rise in the share of its firings the model disagrees with, beyond z standard
               errors of sampling noise: 0 on reference-like traffic)
    trust_r  = weight_r * (1 - b_r) for a heuristic rule (its training-time precision), weight_r for a
               rule declared a `definition`. Trust does NOT fall because a rule's inputs moved: a
               covariate shift leaves a correct rule correct (the heal Job checks heuristics
               against the other evidence on rows).
    rule_conflict = sum_r trust_r * excess_r / sum_r weight_r, over rules with f_r >= min_fires
It is a share in [0, 1]. Shares of firings (not of all rows) are used because analyst rules often
fire on a small fraction of traffic. Rules firing fewer than `min_fires` times abstain.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from model_handler.rules import RuleSet
from model_handler.sketches import DriftSketch, ReferenceProfile, SketchError


# Beta prior on a rule's reference conflict share: analyst rules are assumed right about 90% of the
# time until the reference data says otherwise.
BASELINE_PRIOR_CONFLICTS = 1
BASELINE_PRIOR_FIRINGS = 10


def psi(reference_counts: np.ndarray, window_counts: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population stability index of two histograms over the same bins; each share is smoothed by
    `epsilon` (then renormalised) so empty bins give a large but finite value."""
    reference_counts = np.asarray(reference_counts, dtype=np.float64)
    window_counts = np.asarray(window_counts, dtype=np.float64)
    if reference_counts.shape != window_counts.shape:
        raise ValueError(f"histograms differ in bins: {reference_counts.shape} vs {window_counts.shape}")
    if reference_counts.sum() == 0 or window_counts.sum() == 0:
        return 0.0
    k = len(reference_counts)
    p = (reference_counts / reference_counts.sum() + epsilon) / (1 + k * epsilon)
    q = (window_counts / window_counts.sum() + epsilon) / (1 + k * epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


SIGNALS = ("input", "label", "rules")


@dataclass(frozen=True)
class RuleScore:
    name: str
    fires: int
    fire_rate: float                 # firings / samples
    conflict_rate: float             # share of its firings where the model predicted another class
    reference_conflict_rate: float   # the same share on the reference data, smoothed (0.1 where unknown)
    excess: float                    # conflict rise beyond sampling noise (see module docstring)
    trust: float                     # weight x training-time precision (x 1 for a definition)
    abstained: bool                  # fewer than min_fires firings: not counted in rule_conflict
    input_psi: float = 0.0           # largest PSI of the features the rule reads
    kind: str = "heuristic"


@dataclass(frozen=True)
class DriftScores:
    samples: int
    insufficient: bool               # fewer than min_samples rows: never evidence of drift
    input_shift: float               # max per-feature PSI
    prediction_shift: float          # PSI of predicted-class rates
    entropy_shift: float             # PSI of the normalised prediction-entropy histogram
    rule_conflict: float             # trust-weighted excess conflict share, in [0, 1]
    feature_psi: dict[str, float] = field(default_factory=dict)
    top_features: list[str] = field(default_factory=list)
    rules: list[RuleScore] = field(default_factory=list)
    reference_rules_match: bool = True   # False: the reference was fitted with other rules
    label_shift: float = 0.0         # max_c |log(q_c / pi_c)|: estimated class-prior shift
    estimated_prior: list[float] = field(default_factory=list)   # q
    input_p: float = 1.0             # p-value of the largest feature shift (Bonferroni over features)
    label_p: float = 1.0             # p-value of the predicted-class counts against the reference
    silent: dict[str, str] = field(default_factory=dict)   # signal -> why it cannot see this window

    def to_dict(self) -> dict:
        return asdict(self)


def chi2_sf(stat: float, df: int) -> float:
    """P(X > stat) for X ~ chi-square(df): the regularised upper incomplete gamma Q(df/2, stat/2),
    by its series below a + 1 and its continued fraction (modified Lentz) above, to about 1e-14
    relative. Here rather than scipy.stats.chi2 because scipy.stats costs the operator, which runs
    this on every drift check, about 60 MiB of memory."""
    if df <= 0:
        raise ValueError(f"chi-square needs df >= 1, got {df}")
    if not stat > 0:
        return 1.0
    if math.isinf(stat):
        return 0.0
    a, x = df / 2.0, stat / 2.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:   # series for P(a, x); Q = 1 - P is not small here
        term = total = 1.0 / a
        k = a
        for _ in range(10_000):
            k += 1.0
            term *= x / k
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return float(min(1.0, max(0.0, 1.0 - total * math.exp(log_front))))
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-16:
            break
    return float(min(1.0, max(0.0, math.exp(log_front) * h)))


def _chi2_p(observed: np.ndarray, expected_share: np.ndarray) -> float:
    """p-value of observed counts against expected shares (chi-square goodness of fit); bins the
    reference never saw get a small floor so that rows landing there count as evidence."""
    observed = np.asarray(observed, dtype=np.float64)
    n = observed.sum()
    keep = (expected_share > 0) | (observed > 0)
    if n == 0 or keep.sum() < 2:
        return 1.0
    share = np.maximum(np.asarray(expected_share, dtype=np.float64)[keep], 0.5 / max(n, 1))
    share /= share.sum()
    expected = n * share
    stat = float(((observed[keep] - expected) ** 2 / expected).sum())
    return chi2_sf(stat, int(keep.sum()) - 1)


def estimate_prior(predicted_counts: np.ndarray, reference: ReferenceProfile) -> tuple[np.ndarray, np.ndarray]:
    """(q, pi): the window's class prior and the training one. With the reference's confusion matrix
    C = P(predicted | true), q solves C q = predicted rates (BBSE, Lipton et al. 2018), clipped to
    >= 0 and renormalised; without it both are predicted-class rates (C taken as the identity)."""
    counts = np.asarray(predicted_counts, dtype=np.float64)
    k = len(counts)
    mu = (counts + 0.5) / (counts.sum() + 0.5 * k)
    ref = reference.counts.counters["predicted"].astype(np.float64)
    mu_ref = (ref + 0.5) / (ref.sum() + 0.5 * k)
    if reference.confusion is None:
        return mu, mu_ref
    try:
        q = np.linalg.solve(reference.confusion, mu)
        pi = np.linalg.solve(reference.confusion, mu_ref)
    except np.linalg.LinAlgError:
        return mu, mu_ref
    floor = 0.25 / max(counts.sum(), 1.0)
    q, pi = np.clip(q, floor, None), np.clip(pi, floor, None)
    return q / q.sum(), pi / pi.sum()


def drift_scores(window: DriftSketch, reference: ReferenceProfile, rules: RuleSet, *,
                 min_samples: int = 200, min_fires: int = 10, psi_scale: float = 1.0,
                 noise_z: float = 2.0, epsilon: float = 1e-4, top_threshold: float = 0.1,
                 top_k: int = 5) -> DriftScores:
    """Score one window (usually `later - earlier` of merged pod sketches) against the reference.
    (`psi_scale` is kept for callers of the old trust formula; trust no longer uses it.)"""
    if window.reference.fingerprint != reference.fingerprint:
        raise SketchError(f"window sketch was built on reference {window.reference.fingerprint[:12]}, "
                          f"not on {reference.fingerprint[:12]}")
    if window.n_rules != len(rules):
        raise ValueError(f"window sketch counts {window.n_rules} rules but the rule set has {len(rules)}")
    if window.rules_hash is not None and window.rules_hash != rules.hash():
        raise ValueError("window sketch was counted with a different rule set (rules hash differs)")
    if not (psi_scale > 0 and noise_z >= 0 and min_fires >= 1 and min_samples >= 0 and epsilon > 0):
        raise ValueError("need psi_scale > 0, noise_z >= 0, min_fires >= 1, min_samples >= 0 and epsilon > 0")

    n = window.n
    ref_counts = reference.counts
    feature_psi = {name: psi(ref_counts.feature_counts(i), window.feature_counts(i), epsilon)
                   for i, name in enumerate(reference.features)}
    ranked = sorted(feature_psi, key=lambda name: -feature_psi[name])
    top_features = [name for name in ranked if feature_psi[name] > top_threshold][:top_k]
    input_p = 1.0
    if n and ranked:
        worst = reference.features.index(ranked[0])
        input_p = min(1.0, len(reference.features) * _chi2_p(window.feature_counts(worst),
                                                               reference.bin_proportions(worst)))

    reference_rules_match = reference.n_rules == len(rules) and reference.rules_hash in (None, rules.hash())
    fires, conflicts = window.counters["rule_fires"], window.counters["rule_conflicts"]
    rule_scores, weighted_excess, voting_weight = [], 0.0, 0.0
    for r, (rule, columns) in enumerate(zip(rules.rules, rules.feature_index)):
        ref_fires, ref_conflicts = 0, 0
        if reference_rules_match:
            ref_fires = int(ref_counts.counters["rule_fires"][r])
            ref_conflicts = int(ref_counts.counters["rule_conflicts"][r])
        baseline = (ref_conflicts + BASELINE_PRIOR_CONFLICTS) / (ref_fires + BASELINE_PRIOR_FIRINGS)
        f, c = int(fires[r]), int(conflicts[r])
        share = c / f if f else 0.0
        noise = noise_z * math.sqrt(baseline * (1 - baseline) / f) if f else 0.0
        excess = max(0.0, share - baseline - noise)
        input_drift = max((feature_psi[reference.features[i]] for i in columns), default=0.0)
        trust = rule.weight * (1.0 if rule.kind == "definition" else 1.0 - baseline)
        abstained = f < min_fires
        if not abstained:
            weighted_excess += trust * excess
            voting_weight += rule.weight
        rule_scores.append(RuleScore(rule.name, f, f / n if n else 0.0, share, float(baseline), excess,
                                     trust, abstained, input_drift, rule.kind))

    predicted = window.counters["predicted"]
    q, pi = estimate_prior(predicted, reference)
    label_shift = float(np.max(np.abs(np.log(q / pi)))) if n else 0.0
    label_p = _chi2_p(predicted, reference.class_rates) if n else 1.0
    scores = DriftScores(
        samples=n,
        insufficient=n < min_samples,
        input_shift=max(feature_psi.values(), default=0.0),
        prediction_shift=psi(ref_counts.counters["predicted"], predicted, epsilon),
        entropy_shift=psi(ref_counts.counters["entropy"], window.counters["entropy"], epsilon),
        rule_conflict=weighted_excess / voting_weight if voting_weight else 0.0,
        feature_psi=feature_psi, top_features=top_features, rules=rule_scores,
        reference_rules_match=reference_rules_match, label_shift=label_shift,
        estimated_prior=[round(float(v), 5) for v in q], input_p=input_p, label_p=label_p)
    return _with_silence(scores, window, top_threshold)


def _with_silence(scores: DriftScores, window: DriftSketch, drifted_psi: float) -> DriftScores:
    """Say why the rule signal cannot see this window, where it visibly cannot."""
    silent = {}
    voting = [r for r in scores.rules if not r.abstained]
    n = max(scores.samples, 1)
    if not scores.rules:
        silent["rules"] = "no rules are defined"
    elif not voting:
        rate = float(window.counters["rule_fires"].sum()) / n
        silent["rules"] = (f"no rule fired often enough to judge ({rate:.1%} of rows carry a firing; "
                           f"each rule needs 10 firings a window)")
    elif all(r.input_psi >= drifted_psi for r in voting):
        silent["rules"] = "every rule that fires reads a drifted feature (conflicts may be the rules' own)"
    elif scores.rule_conflict == 0 and all(r.conflict_rate <= r.reference_conflict_rate for r in voting):
        silent["rules"] = "the model agrees with the rules at least as well as at training time"
    if scores.label_shift == 0:
        silent["label"] = "predicted class rates match the training ones"
    return replace(scores, silent=silent)


@dataclass
class HealTrigger:
    """Declares drift after `persistence` consecutive checks with ANY signal on (see the module
    docstring: effect size at or above its `*_on` threshold and p-value at most `alpha`); clears it
    once every signal is below its `*_off` threshold. Insufficient windows neither count nor reset.

    Defaults, measured on the fraud example with 500-row windows (bench/healing.py prints the
    false-alarm rate and detection delay): the largest per-feature PSI of stationary windows stays
    below 0.06, their rule conflict below 0.01 and their label shift below 0.3, while the drifts
    the benchmark heals reach 0.1-8, 0.05-0.5 and 0.5-2. Two checks in a row rule out one unlucky
    window; the off thresholds sit lower, so a window hovering near a threshold cannot flap.
    """

    input_on: float = 0.10
    conflict_on: float = 0.05
    input_off: float = 0.07
    conflict_off: float = 0.025
    persistence: int = 2
    label_on: float = 0.4            # |log| of the estimated/training class-rate ratio (x1.5)
    label_off: float = 0.2
    alpha: float = 0.01              # significance each signal needs as well
    consecutive: int = 0             # state: checks in a row with a signal on
    drifting: bool = False           # state: drift declared and not yet cleared
    signals: tuple[str, ...] = ()    # state: the signals on in the last sufficient window

    def __post_init__(self) -> None:
        for name in ("input_on", "conflict_on", "input_off", "conflict_off", "label_on", "label_off"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.input_off > self.input_on or self.conflict_off > self.conflict_on or self.label_off > self.label_on:
            raise ValueError(f"off thresholds must not exceed on thresholds (input {self.input_off} > "
                             f"{self.input_on}, conflict {self.conflict_off} > {self.conflict_on} or "
                             f"label {self.label_off} > {self.label_on})")
        if isinstance(self.persistence, bool) or not isinstance(self.persistence, int) or self.persistence < 1:
            raise ValueError(f"persistence must be an integer >= 1, got {self.persistence!r}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
        self.signals = tuple(s for s in SIGNALS if s in set(self.signals))

    def on(self, scores: DriftScores) -> tuple[str, ...]:
        """The signals on in this window (effect size and significance)."""
        found = []
        if scores.input_shift >= self.input_on and scores.input_p <= self.alpha:
            found.append("input")
        if scores.label_shift >= self.label_on and scores.label_p <= self.alpha:
            found.append("label")
        if scores.rule_conflict >= self.conflict_on:
            found.append("rules")
        return tuple(found)

    def quiet(self, scores: DriftScores) -> bool:
        """Every signal below its off threshold."""
        return (scores.input_shift < self.input_off and scores.rule_conflict < self.conflict_off
                and scores.label_shift < self.label_off)

    def update(self, scores: DriftScores) -> bool:
        """Feed one check; returns whether drift is declared now."""
        if scores.insufficient:
            return self.drifting
        self.signals = self.on(scores)
        if self.drifting:
            if self.quiet(scores):
                self.drifting, self.consecutive = False, 0
            return self.drifting
        if self.signals:
            self.consecutive += 1
            self.drifting = self.consecutive >= self.persistence
        else:
            self.consecutive = 0
        return self.drifting

    def reset(self) -> None:
        """Forget the state, e.g. after a new adapter was promoted."""
        self.consecutive, self.drifting, self.signals = 0, False, ()

    def to_dict(self) -> dict:
        """The state only (thresholds come from the spec): what the operator keeps in the CR status."""
        return {"consecutive": self.consecutive, "drifting": self.drifting, "signals": list(self.signals)}

    @classmethod
    def from_dict(cls, state: dict, **thresholds) -> HealTrigger:
        if not isinstance(state, dict) or not {"consecutive", "drifting"} <= set(state) \
                or not set(state) <= {"consecutive", "drifting", "signals"}:
            raise ValueError(f"trigger state must be {{'consecutive': int, 'drifting': bool, 'signals': [...]}}, "
                             f"got {state!r}")
        consecutive, drifting = state["consecutive"], state["drifting"]
        signals = state.get("signals") or []
        if isinstance(consecutive, bool) or not isinstance(consecutive, int) or consecutive < 0 \
                or not isinstance(drifting, bool) or not isinstance(signals, list) \
                or not set(signals) <= set(SIGNALS):
            raise ValueError(f"trigger state needs consecutive >= 0 (int), drifting (bool) and signals from "
                             f"{list(SIGNALS)}, got {state!r}")
        return cls(**thresholds, consecutive=consecutive, drifting=drifting, signals=tuple(signals))


def describe(scores: DriftScores, trigger: HealTrigger) -> str:
    """One line for a person: which signals are on, their values, the top features, and why the
    silent signals are silent."""
    on = trigger.on(scores)
    parts = [f"signals on: {', '.join(on) if on else 'none'}",
             f"input shift {scores.input_shift:.3f} (p={scores.input_p:.2g})",
             f"label shift {scores.label_shift:.3f} (p={scores.label_p:.2g}, class rates now "
             f"{scores.estimated_prior})",
             f"rule conflict {scores.rule_conflict:.3f}"]
    if scores.top_features:
        parts.append(f"top features {scores.top_features}")
    for signal, why in scores.silent.items():
        if signal not in on:
            parts.append(f"{signal} silent: {why}")
    return "; ".join(parts)
