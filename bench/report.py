"""The healing benchmark's JSON as the Markdown tables of docs/benchmarks.md.

    python -m bench.report out/healing.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

BASELINES = ["tent", "norm_stats", "em_prior", "em_bcts", "bbse"]


def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _gap(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def tables(result: dict) -> str:
    lines = ["| scenario | metric | none | oracle | true prior (labels) | " + " | ".join(BASELINES)
             + " | selfheal | gap closed |",
             "| --- | --- | " + " | ".join(["---"] * (len(BASELINES) + 5)) + " |"]
    for name, sc in result["scenarios"].items():
        m = sc["methods"]
        control = " (negative control)" if sc.get("negative_control") else ""
        lines.append(f"| {name}{control} | {sc['metric'].replace('_', ' ')} | {_f(m['none']['primary'])} | "
                     f"{_f(m['oracle']['primary'])} | "
                     + (f"{_f(m['true_prior']['primary'])} ({_gap(m['true_prior']['gap_closed'])}) | "
                        if "true_prior" in m else "- | ")
                     + " | ".join(f"{_f(m[b]['primary'])} ({_gap(m[b]['gap_closed'])})" for b in BASELINES)
                     + f" | **{_f(m['selfheal']['primary'])}** | **{_gap(m['selfheal']['gap_closed'])}** |")
    lines += ["", "| scenario | F1 none → selfheal | PR-AUC none → selfheal | clean none → selfheal (counts) | "
                  "Jobs | promoted / approval / rejected / nothing | harmful | rolled back | declared (≤ 2 windows) | "
                  "mean delay (rows) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, sc in result["scenarios"].items():
        m, s, d = sc["methods"]["none"], sc["methods"]["selfheal"], sc["detection"]
        f1 = f"{_f(m.get('f1'))} → {_f(s.get('f1'))}" if sc.get("positive_class") is not None else "-"
        pr = f"{_f(m.get('pr_auc'))} → {_f(s.get('pr_auc'))}" if sc.get("positive_class") is not None else "-"
        counts = "yes" if sc["clean_counts"] else "no"
        lines.append(f"| {name} | {f1} | {pr} | {_f(m['clean'])} → {_f(s['clean'])} ({counts}) | {s['jobs']} | "
                     f"{s['promotions']} / {s['approvals_pending']} / {s['rejected']} / {s['nothing_to_fix']} | "
                     f"{s['harmful_promotions']} | {s['rollbacks']} | {d['declared_runs']}/{d['runs']} "
                     f"({d['within_2_windows']}) | {_f(d['mean_delay_rows'], 0)} |")
    refs = [f"{name} (oracle {sc['methods']['oracle']['harmful_if_promoted']}, true prior "
            f"{sc['methods']['true_prior']['harmful_if_promoted']})" for name, sc in result["scenarios"].items()
            if sc["methods"]["oracle"].get("harmful_if_promoted") or sc["methods"].get("true_prior", {}).get("harmful_if_promoted")]
    if refs:
        lines += ["", "The same harm rule, applied to the references (runs in which it would call them harmful): "
                  + "; ".join(refs) + "."]
    st = [sc["stationary"] for sc in result["scenarios"].values()]
    windows = sum(s["windows"] for s in st)
    lines += ["", f"Stationary traffic (shuffled source rows, the same loop): "
                  f"{sum(s['alarm_windows'] for s in st)}/{windows} windows with a signal on, "
                  f"{sum(s['declared'] for s in st)} drift declarations, {sum(s['jobs'] for s in st)} Jobs, "
                  f"{sum(s['promotions'] for s in st)} promotions. Run time {result['seconds']:.0f} s "
                  f"({result['seeds']} seeds, {result.get('jobs', 1)} processes)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(tables(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
