"""A plain-text report of what a scenario shifts: sizes, class rates, moved features, stale rules.

It is how a reader sees, before any benchmark runs, which inputs moved (KS distance, mean and SD)
and which analyst rules lost precision or coverage between the training data and the stream.
"""
from __future__ import annotations

import numpy as np

from examples.scenario import Scenario, Split
from model_handler.rules import RuleSet


def rule_fires(rules_yaml: str, features: list[str], classes: list[str],
               x: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(rule names, class index per rule [R], fires [N, R] bool) for rows `x`."""
    rule_set = RuleSet.from_yaml(rules_yaml, features, classes)
    fires = rule_set.fires(np.asarray(x, dtype=np.float32)).numpy()
    return [rule.name for rule in rule_set.rules], rule_set.labels.numpy(), fires


def rule_quality(scenario: Scenario, split: Split) -> list[tuple[str, str, float, float]]:
    """Per rule: (name, label, precision, coverage) on `split`; NaN precision: it never fires."""
    names, labels, fires = rule_fires(scenario.rules_yaml, scenario.features, scenario.classes,
                                      split.x)
    report = []
    for r, name in enumerate(names):
        hit = fires[:, r]
        precision = float(np.mean(split.y[hit] == labels[r])) if hit.any() else float("nan")
        report.append((name, scenario.classes[labels[r]], precision, float(hit.mean())))
    return report


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    gap = np.searchsorted(a, points, side="right") / len(a) - \
        np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(gap)))


def shifted_features(train: Split, served: Split, features: list[str],
                     top: int = 5) -> list[tuple[str, float, float, float]]:
    """The `top` features whose distribution moved most (by KS distance), each as
    (name, KS distance, mean shift in train SDs, served SD / train SD). KS also catches changes a
    mean/SD comparison misses, such as a skewed feature whose sign flipped."""
    mean_t, sd_t = train.x.mean(0, dtype=np.float64), train.x.std(0, dtype=np.float64)
    mean_s, sd_s = served.x.mean(0, dtype=np.float64), served.x.std(0, dtype=np.float64)
    scale = np.where(sd_t > 1e-12, sd_t, 1.0)
    ks = np.array([ks_distance(train.x[:, i], served.x[:, i]) for i in range(len(features))])
    order = np.argsort(-ks, kind="stable")[:top]
    return [(features[i], float(ks[i]), float((mean_s[i] - mean_t[i]) / scale[i]),
             float(sd_s[i] / scale[i])) for i in order]


def describe(scenario: Scenario) -> str:
    s = scenario
    lines = [f"== {s.name} ({s.domain}) — {s.description}",
             f"   sizes: train {len(s.train)}, clean_test {len(s.clean_test)}, "
             f"stream {len(s.stream)}, holdout {len(s.holdout)}; {len(s.features)} features"]
    def rates(split: Split) -> str:
        return ", ".join(f"{c} {np.mean(split.y == k):.2%}" for k, c in enumerate(s.classes))
    lines.append(f"   class rates: train [{rates(s.train)}]  stream [{rates(s.stream)}]")
    moved = shifted_features(s.train, s.stream, s.features)
    lines.append("   top shifted features (KS distance; mean shift in train SDs; SD ratio): "
                 + ", ".join(f"{name} KS {ks:.2f} ({shift:+.2f} SD, x{ratio:.2f})"
                             for name, ks, shift, ratio in moved))
    lines.append(f"   {'rule':28s} {'label':>7s}   train prec/cov    stream prec/cov")
    for (name, label, p_t, c_t), (_, _, p_s, c_s) in zip(rule_quality(s, s.train),
                                                         rule_quality(s, s.stream)):
        lines.append(f"   {name:28s} {label:>7s}   {p_t:6.3f} / {c_t:6.2%}   "
                     f"{p_s:6.3f} / {c_s:6.2%}")
    return "\n".join(lines)
