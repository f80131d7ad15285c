"""Drift scores for a traffic window, and the hysteresis that turns them into a heal decision.

Healing without labels is only safe when two independent signals agree: the inputs moved away
from the training data (`input_shift`, the largest per-feature PSI), and the model now disagrees
with the analysts' rules more than it did at training time (`rule_conflict`). Input shift alone is
often harmless (a feature the model ignores moved); conflict alone may be rules that were never
right. `HealTrigger` asks for both, for several consecutive checks, and clears only when both have
fallen below lower thresholds, so a window that hovers around a threshold cannot flap.

rule_conflict, per rule r with f_r firings and c_r conflicts in the window:
    b_r      = the rule's conflict share on the reference, (conflicts + 1) / (firings + 10): a rule
               that fired only once or twice at training time gets a baseline near the prior
               guess of 10% instead of an arbitrary 0% or 100%
    excess_r = max(0, c_r / f_r - b_r - z * sqrt(b_r (1 - b_r) / f_r))
               (the rise in the share of its firings the model disagrees with, beyond z standard
               errors of sampling noise: 0 on reference-like traffic)
    trust_r  = weight_r * exp(-max PSI of the features r reads / psi_scale)
               (a rule reading drifted inputs may be firing for the wrong reason, so it counts less)
    rule_conflict = sum_r trust_r * excess_r / sum_r weight_r, over rules with f_r >= min_fires
It is a share in [0, 1]. Shares of firings (not of all rows) are used because analyst rules often
fire on a small fraction of traffic. Rules firing fewer than `min_fires` times abstain; dividing by
weights, not trusts, makes down-weighted rules lower the score instead of cancelling out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

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


@dataclass(frozen=True)
class RuleScore:
    name: str
    fires: int
    fire_rate: float                 # firings / samples
    conflict_rate: float             # share of its firings where the model predicted another class
    reference_conflict_rate: float   # the same share on the reference data, smoothed (0.1 where unknown)
    excess: float                    # conflict rise beyond sampling noise (see module docstring)
    trust: float                     # weight x exp(-max input PSI / psi_scale)
    abstained: bool                  # fewer than min_fires firings: not counted in rule_conflict


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

    def to_dict(self) -> dict:
        return asdict(self)


def drift_scores(window: DriftSketch, reference: ReferenceProfile, rules: RuleSet, *,
                 min_samples: int = 200, min_fires: int = 10, psi_scale: float = 1.0,
                 noise_z: float = 2.0, epsilon: float = 1e-4, top_threshold: float = 0.1,
                 top_k: int = 5) -> DriftScores:
    """Score one window (usually `later - earlier` of merged pod sketches) against the reference."""
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
        trust = rule.weight * math.exp(-input_drift / psi_scale)
        abstained = f < min_fires
        if not abstained:
            weighted_excess += trust * excess
            voting_weight += rule.weight
        rule_scores.append(RuleScore(rule.name, f, f / n if n else 0.0, share, float(baseline), excess,
                                     trust, abstained))

    return DriftScores(
        samples=n,
        insufficient=n < min_samples,
        input_shift=max(feature_psi.values(), default=0.0),
        prediction_shift=psi(ref_counts.counters["predicted"], window.counters["predicted"], epsilon),
        entropy_shift=psi(ref_counts.counters["entropy"], window.counters["entropy"], epsilon),
        rule_conflict=weighted_excess / voting_weight if voting_weight else 0.0,
        feature_psi=feature_psi, top_features=top_features, rules=rule_scores,
        reference_rules_match=reference_rules_match)


@dataclass
class HealTrigger:
    """Declares drift after `persistence` consecutive checks with both signals at or above `on`;
    clears it once both are below `off`. Insufficient windows neither count nor reset.

    Defaults, measured on the fraud example with 500-row windows (bench/healing.py prints the
    false-alarm rate and detection delay): the largest per-feature PSI of stationary windows stays
    below 0.06 and their rule conflict below 0.01, while the drifts the benchmark heals reach
    0.1-8 and 0.05-0.5. Two checks in a row rule out one unlucky window; the off thresholds
    sit halfway, so a window hovering near a threshold cannot flap.
    """

    input_on: float = 0.10
    conflict_on: float = 0.05
    input_off: float = 0.07
    conflict_off: float = 0.025
    persistence: int = 2
    consecutive: int = 0             # state: checks in a row with both signals on
    drifting: bool = False           # state: drift declared and not yet cleared

    def __post_init__(self) -> None:
        for name in ("input_on", "conflict_on", "input_off", "conflict_off"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.input_off > self.input_on or self.conflict_off > self.conflict_on:
            raise ValueError(f"off thresholds must not exceed on thresholds (input {self.input_off} > "
                             f"{self.input_on} or conflict {self.conflict_off} > {self.conflict_on})")
        if isinstance(self.persistence, bool) or not isinstance(self.persistence, int) or self.persistence < 1:
            raise ValueError(f"persistence must be an integer >= 1, got {self.persistence!r}")

    def update(self, scores: DriftScores) -> bool:
        """Feed one check; returns whether drift is declared now."""
        if scores.insufficient:
            return self.drifting
        if self.drifting:
            if scores.input_shift < self.input_off and scores.rule_conflict < self.conflict_off:
                self.drifting, self.consecutive = False, 0
            return self.drifting
        if scores.input_shift >= self.input_on and scores.rule_conflict >= self.conflict_on:
            self.consecutive += 1
            self.drifting = self.consecutive >= self.persistence
        else:
            self.consecutive = 0
        return self.drifting

    def reset(self) -> None:
        """Forget the state, e.g. after a new adapter was promoted."""
        self.consecutive, self.drifting = 0, False

    def to_dict(self) -> dict:
        """The state only (thresholds come from the spec): what the operator keeps in the CR status."""
        return {"consecutive": self.consecutive, "drifting": self.drifting}

    @classmethod
    def from_dict(cls, state: dict, **thresholds) -> HealTrigger:
        if not isinstance(state, dict) or set(state) != {"consecutive", "drifting"}:
            raise ValueError(f"trigger state must be {{'consecutive': int, 'drifting': bool}}, got {state!r}")
        consecutive, drifting = state["consecutive"], state["drifting"]
        if isinstance(consecutive, bool) or not isinstance(consecutive, int) or consecutive < 0 \
                or not isinstance(drifting, bool):
            raise ValueError(f"trigger state needs consecutive >= 0 (int) and drifting (bool), got {state!r}")
        return cls(**thresholds, consecutive=consecutive, drifting=drifting)
