"""The healing benchmark: selfheal vs. no adaptation, an oracle, TENT, norm-stats and EM, side by side.

    python -m bench.healing --quick [--json out.json]      # 1 seed, small sizes, < 3 minutes
    python -m bench.healing [--seeds 10] [--json out.json] # full

Protocol (the same data for every method):
- The backbone is trained on the scenario's source data; the adapter starts at identity.
- The drifted stream arrives in batches. Each batch is scored BEFORE any method adapts on it
  (prequential accuracy); then each method may adapt. selfheal only heals when its drift trigger
  fires (two signals, persistence, cooldown), exactly as a pod + operator would.
- At the end every method's model is scored on a fresh held-out drifted set no method saw, and
  on clean source data (forgetting).
- gap_closed = (m - m_none) / (m_oracle - m_none) on the held-out set, where m is the scenario's
  metric: accuracy, or balanced accuracy where one class is ~99% of rows (ULB: plain accuracy
  would hide the damage). Reported only where the oracle gains at least 0.5 points. A promotion
  is harmful if selfheal's promoted model is more than 0.5 points worse than no adaptation.
- labels_used counts true labels a method touched: 0 for all but the oracle.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench import baselines
from bench.metrics import accuracy, scores, threshold_at_rate
from examples.scenario import Scenario
from model_handler.drift import HealTrigger, drift_scores
from model_handler.healing import HealConfig, heal
from model_handler.model import SelfHealingNet
from model_handler.rules import RuleSet
from model_handler.sketches import DriftSketch, ReferenceProfile
from model_handler.training import train_backbone

METHODS = ["none", "oracle", "tent", "norm_stats", "em_prior", "selfheal"]
MIN_ORACLE_GAIN = 0.005
HARM_MARGIN = 0.005


@dataclass
class SelfHealLoop:
    """The pod + operator loop in miniature: sketch each batch, trigger, heal, gate, promote."""

    model: SelfHealingNet
    rules: RuleSet
    reference: ReferenceProfile
    config: HealConfig
    trigger: HealTrigger = field(default_factory=HealTrigger)
    window_rows: int = 3000
    cooldown_batches: int = 2
    seen: list = field(default_factory=list)
    events: list = field(default_factory=list)
    cooldown: int = 0
    promotions: int = 0
    detected_at: int | None = None

    def observe(self, batch_index: int, x_batch: np.ndarray) -> None:
        self.seen.append(x_batch)
        probs = self.model.predict_proba(x_batch).numpy()
        fires = self.rules.fires(x_batch).numpy()
        sketch = DriftSketch.empty(self.reference, len(self.rules))
        sketch.update(x_batch, probs, fires, self.rules.labels.numpy())
        drift = drift_scores(sketch, self.reference, self.rules)
        detected = self.trigger.update(drift)
        if detected and self.detected_at is None:
            self.detected_at = batch_index
        if self.cooldown > 0:
            self.cooldown -= 1
            return
        if not detected:
            return
        recent = np.concatenate(self.seen)[-self.window_rows:]
        result = heal(self.model, recent, self.rules, self.reference, self.config)
        self.events.append({"batch": batch_index, "steps": result.steps, "promoted": result.promotable,
                            "reason": result.reason})
        self.cooldown = self.cooldown_batches
        if result.promotable:
            self.model = result.candidate
            self.promotions += 1
            self.trigger = HealTrigger()


def false_alarms(model: SelfHealingNet, rules: RuleSet, reference: ReferenceProfile, x_clean: np.ndarray,
                 window: int) -> tuple[int, int]:
    """Checks on stationary (source-distribution) windows, and how many of them the trigger
    would have counted towards drift (both signals on)."""
    trigger = HealTrigger()
    checks = alarms = 0
    for start in range(0, len(x_clean) - window + 1, window):
        xb = x_clean[start:start + window]
        sketch = DriftSketch.empty(reference, len(rules))
        sketch.update(xb, model.predict_proba(xb).numpy(), rules.fires(xb).numpy(), rules.labels.numpy())
        scores = drift_scores(sketch, reference, rules)
        checks += 1
        alarms += int(scores.input_shift >= trigger.input_on and scores.rule_conflict >= trigger.conflict_on)
    return checks, alarms


def run_scenario(scenario: Scenario, seed: int, batches: int = 8) -> dict:
    torch.manual_seed(seed)
    log_features = scenario.extra.get("log_features", [])
    model = train_backbone(scenario.train.x, scenario.train.y, scenario.features, scenario.classes,
                           log_features=log_features, seed=seed)
    rules = RuleSet.from_yaml(scenario.rules_yaml, scenario.features, scenario.classes)
    reference = ReferenceProfile.fit(scenario.train.x, model.predict_proba(scenario.train.x).numpy(),
                                     rules.fires(scenario.train.x).numpy(), rules.labels.numpy(),
                                     scenario.features, scenario.classes)
    stream = scenario.stream
    bounds = np.linspace(0, len(stream), batches + 1).astype(int)
    models: dict[str, SelfHealingNet] = {"none": model}
    tent = baselines.Tent(model)
    loop = SelfHealLoop(model, rules, reference, HealConfig(seed=seed))
    prequential = {m: [] for m in METHODS if m != "oracle"}
    for b in range(batches):
        xb, yb = stream.x[bounds[b]:bounds[b + 1]], stream.y[bounds[b]:bounds[b + 1]]
        seen = stream.x[:bounds[b + 1]]
        current = {"none": model, "tent": tent.model, "norm_stats": models.get("norm_stats", model),
                   "em_prior": models.get("em_prior", model), "selfheal": loop.model}
        for name, m in current.items():
            prequential[name].append(accuracy(yb, m.predict_proba(xb).argmax(1).numpy()))
        tent.update(xb)
        models["norm_stats"] = baselines.norm_stats(model, seen)
        models["em_prior"] = baselines.em_prior(model, seen)
        loop.observe(b, xb)
    models["tent"] = tent.model
    models["selfheal"] = loop.model
    models["oracle"] = baselines.oracle(model, stream.x, stream.y, seed=seed)

    out = {}
    hold, clean = scenario.holdout, scenario.clean_test
    for name in METHODS:
        m = models[name]
        s = scores(hold.y, m.predict_proba(hold.x).numpy())
        s["clean_accuracy"] = accuracy(clean.y, m.predict_proba(clean.x).argmax(1).numpy())
        s["prequential_accuracy"] = float(np.mean(prequential[name])) if name in prequential else float("nan")
        s["labels_used"] = len(stream.y) if name == "oracle" else 0
        out[name] = s
    # The unhealed model at selfheal's flag rate: does selfheal only win by flagging less?
    if len(scenario.classes) == 2:
        p_none = model.predict_proba(hold.x).numpy()[:, 1]
        t = threshold_at_rate(p_none, out["selfheal"]["flag_rate"])
        out["none"]["accuracy_at_selfheal_flag_rate"] = accuracy(hold.y, (p_none >= t).astype(int))
    metric = scenario.extra.get("metric", "accuracy")
    out["metric"] = metric
    harmful = int(loop.promotions > 0 and out["selfheal"][metric] < out["none"][metric] - HARM_MARGIN)
    out["selfheal"].update(harmful_promotions=harmful, promotions=loop.promotions, events=loop.events)
    checks, alarms = false_alarms(model, rules, reference, clean.x, int(bounds[1]))
    out["detection"] = {"stationary_checks": checks, "false_alarms": alarms,
                        "delay_batches": loop.detected_at, "batch_rows": int(bounds[1])}
    return out


def aggregate(runs: list[dict]) -> dict:
    """Means over seeds; gap_closed from the mean accuracies; harmful promotions summed."""
    metric = runs[0]["metric"]
    methods = {}
    for name in METHODS:
        keys = [k for k, v in runs[0][name].items() if isinstance(v, (int, float))]
        methods[name] = {k: _mean([r[name][k] for r in runs]) for k in keys}
        methods[name]["labels_used"] = int(runs[0][name]["labels_used"])
    base, best = methods["none"][metric], methods["oracle"][metric]
    gain = best - base
    for name in METHODS:
        methods[name]["gap_closed"] = (methods[name][metric] - base) / gain if gain >= MIN_ORACLE_GAIN else None
        methods[name]["harmful_promotions"] = int(sum(r[name].get("harmful_promotions", 0) for r in runs))
    methods["selfheal"]["promotions"] = int(sum(r["selfheal"]["promotions"] for r in runs))
    delays = [r["detection"]["delay_batches"] for r in runs]
    detection = {"stationary_checks": sum(r["detection"]["stationary_checks"] for r in runs),
                 "false_alarms": sum(r["detection"]["false_alarms"] for r in runs),
                 "detected_runs": sum(d is not None for d in delays),
                 "mean_delay_batches": _mean([d for d in delays if d is not None]),
                 "batch_rows": runs[0]["detection"]["batch_rows"]}
    return {"metric": metric, "oracle_gain": gain, "seeds": len(runs), "methods": methods, "detection": detection,
            "events": [r["selfheal"]["events"] for r in runs]}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    return float(np.mean(values)) if values else None


def load(quick: bool, seed: int, names: list[str] | None) -> list[Scenario]:
    from examples.fraud.generator import load_scenarios as fraud
    found = fraud(seed=seed, quick=quick)
    try:
        from examples.datasets import load_scenarios as real
        found += real(seed=seed, quick=quick)
    except ImportError:
        pass
    except Exception as err:  # a data set that cannot be fetched here is reported, not fatal
        print(f"[bench] real data sets skipped: {err}", file=sys.stderr)
    return [s for s in found if names is None or s.name in names]


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(width=140)
    for name, sc in result["scenarios"].items():
        table = Table(title=f"{name}: {sc['description']}", title_justify="left")
        for col in ["method", "holdout acc", "bal. acc", "F1", "PR-AUC", "ROC-AUC", "prequential",
                    "clean acc", f"gap closed ({sc['metric'].replace('_', ' ')})", "labels"]:
            table.add_column(col, justify="right" if col != "method" else "left")
        for method, m in sc["methods"].items():
            gap = "-" if m["gap_closed"] is None else f"{m['gap_closed']:.0%}"
            table.add_row(method, _fmt(m["accuracy"]), _fmt(m["balanced_accuracy"]), _fmt(m["f1"], 3), _fmt(m["pr_auc"], 3),
                          _fmt(m["roc_auc"], 3), _fmt(m.get("prequential_accuracy")),
                          _fmt(m["clean_accuracy"]), gap, str(m["labels_used"]))
        console.print(table)
        sh = sc["methods"]["selfheal"]
        none = sc["methods"]["none"]
        extra = ""
        if "accuracy_at_selfheal_flag_rate" in none:
            extra = f"; unhealed model at selfheal's flag rate: {none['accuracy_at_selfheal_flag_rate']:.4f}"
        console.print(f"  selfheal promotions: {sh['promotions']}, harmful: {sh['harmful_promotions']}{extra}")
        d = sc["detection"]
        delay = "never" if d["mean_delay_batches"] is None else f"after {d['mean_delay_batches'] + 1:.1f} batches"
        console.print(f"  drift trigger: {d['false_alarms']}/{d['stationary_checks']} stationary windows alarmed; "
                      f"drift declared in {d['detected_runs']}/{sc['seeds']} runs, {delay} "
                      f"({d['batch_rows']} rows each)")
    console.print(result["summary_text"])


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def summarise(result: dict) -> str:
    lines = ["Summary (gap closed = share of the no-adaptation -> oracle accuracy gap, holdout):"]
    gains = {m: [] for m in METHODS}
    for name, sc in result["scenarios"].items():
        for m in METHODS:
            g = sc["methods"][m]["gap_closed"]
            if g is not None and not sc.get("negative_control"):
                gains[m].append(g)
    for m in ["tent", "norm_stats", "em_prior", "selfheal"]:
        if gains[m]:
            lines.append(f"  {m:10s} mean gap closed {np.mean(gains[m]):7.1%} over {len(gains[m])} scenarios")
    harmful = sum(sc["methods"]["selfheal"]["harmful_promotions"] for sc in result["scenarios"].values())
    lines.append(f"  selfheal harmful promotions: {harmful}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, small sizes")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 10, quick 1)")
    parser.add_argument("--scenario", action="append", help="run only these scenarios")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds or (1 if args.quick else 10)
    started = time.time()
    per_scenario: dict[str, list[dict]] = {}
    meta: dict[str, Scenario] = {}
    for seed in range(seeds):
        for scenario in load(args.quick, seed, args.scenario):
            t = time.time()
            per_scenario.setdefault(scenario.name, []).append(run_scenario(scenario, seed))
            meta[scenario.name] = scenario
            print(f"[bench] {scenario.name} seed {seed}: {time.time() - t:.1f}s", file=sys.stderr)
    result = {"quick": args.quick, "seeds": seeds, "scenarios": {}}
    for name, runs in per_scenario.items():
        agg = aggregate(runs)
        agg["description"] = meta[name].description
        agg["negative_control"] = meta[name].negative_control
        result["scenarios"][name] = agg
    result["summary_text"] = summarise(result)
    result["seconds"] = round(time.time() - started, 1)
    print_table(result)
    print(f"total {result['seconds']}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
