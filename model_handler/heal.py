"""The healing Job's entrypoint: `python -m model_handler.heal ...` (ARCHITECTURE.md §4).

Reads recent sampled traffic from the storage URI, heals the parent adapter with
`model_handler.healing.heal`, writes the candidate (promotable or not) to the registry, and writes a
short JSON result to the termination log, where the operator reads it from the pod status.
Exit 0 when healing ran, whatever the gate said; exit 1 on an error (also reported as JSON).

Config file (JSON or YAML, rendered by the operator from the SelfHealingModel spec):
    rules: [{name, when, label, weight}]     # default: the model directory's rules.yaml
    healing: {trainingWindowRows, minRows, ruleWeight, anchorWeight, entropyWeight, balanceWeight,
              minTrust, seed}
    promotion: {maxClassRateRatio, maxDisagreement, minConflictDrop, conflictTolerance}
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import yaml

from model_handler.gate import GateConfig
from model_handler.healing import HealConfig, heal
from model_handler.model import AdapterError, adapter_to_bytes
from model_handler.redact import redact
from model_handler.registry import BASE_VERSION, AdapterRegistry, RegistryError
from model_handler.served import load_adapter, load_served
from model_handler.traffic import TrafficStore

TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message

HEAL_KEYS = {"minRows": "min_rows", "ruleWeight": "rule_weight", "anchorWeight": "anchor_weight",
             "entropyWeight": "entropy_weight", "balanceWeight": "balance_weight", "minTrust": "min_trust",
             "seed": "seed"}
GATE_KEYS = {"maxClassRateRatio": "max_class_rate_ratio", "maxDisagreement": "max_disagreement",
             "minConflictDrop": "min_conflict_drop", "conflictTolerance": "conflict_tolerance"}


def configs(config: dict) -> tuple[HealConfig, int]:
    healing, promotion = config.get("healing") or {}, config.get("promotion") or {}
    unknown = (set(healing) - set(HEAL_KEYS) - {"trainingWindowRows"}) | (set(promotion) - set(GATE_KEYS))
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    gate = replace(GateConfig(), **{GATE_KEYS[k]: v for k, v in promotion.items()})
    heal_config = replace(HealConfig(), gate=gate, **{HEAL_KEYS[k]: v for k, v in healing.items()
                                                      if k in HEAL_KEYS})
    return heal_config, int(healing.get("trainingWindowRows", 3000))


def run(args: argparse.Namespace) -> dict:
    model_dir = Path(args.model_dir)
    if args.config_json:
        config = json.loads(args.config_json)
    else:
        config = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    if not isinstance(config, dict):
        raise ValueError(f"config file {args.config} must hold a mapping")
    heal_config, window_rows = configs(config)
    served = load_served(model_dir, rules=config.get("rules") or None)
    model, rules, reference = served.model, served.rules, served.reference
    classes = model.spec.classes
    registry = AdapterRegistry(args.storage_uri, args.namespace, args.model)
    load_adapter(model, registry, args.parent)   # every check, the backbone hash included
    store = TrafficStore(args.storage_uri, args.namespace, args.model)
    since = datetime.fromisoformat(args.since.replace("Z", "+00:00")) if args.since else None
    x, _ = store.read_recent(window_rows, since=since)
    deadline = time.monotonic() + args.wait_for_rows
    while len(x) < window_rows and time.monotonic() < deadline:
        time.sleep(2)  # pods flush sampled traffic every few seconds; a fresh drift has little yet
        x, _ = store.read_recent(window_rows, since=since)
    started = datetime.now(timezone.utc)
    if len(x) < heal_config.min_rows:
        return {"version": args.version, "parent": args.parent, "state": "none", "promotable": False,
                "verdict": "nothing", "evidence": [],
                "rows": int(len(x)), "skippedShards": store.skipped,
                "reason": f"not enough sampled traffic: {len(x)} rows, need {heal_config.min_rows}"}
    result = heal(model, x, rules, reference, heal_config)
    verdict = verdict_of(result)
    summary = {"version": args.version, "parent": args.parent, "rows": int(len(x)),
               "skippedShards": store.skipped, "steps": result.steps,
               # for operators older than verdicts: true only for promote, so they never promote
               # by themselves a candidate that a person must approve
               "promotable": verdict == "promote", "verdict": verdict,
               "evidence": [str(e) for e in (getattr(result, "evidence", None) or [])],
               "estimate": estimate_of(result),
               "classRates": dict(zip(classes, [float(r) for r in getattr(result, "class_rates", None) or []])),
               "labelsUsed": result.labels_used, "reason": result.reason[:1000],
               "failed": result.gate.failed if result.gate else []}
    if result.candidate is None or verdict == "nothing":
        return {**summary, "state": "none"}
    state = "candidate" if verdict in ("promote", "approve") else "rejected"
    data = adapter_to_bytes(result.candidate.adapter_state(), {"version": args.version, "parent": args.parent})
    meta = registry.put(args.version, data, {
        "parent": args.parent, "base_model_hash": served.backbone_hash, "rules_hash": rules.hash(),
        "training_window": {"start": since.isoformat() if since else None, "end": started.isoformat(),
                            "rows": int(len(x))}, "creator": args.job_name,
        "labels_used": result.labels_used, "state": state, "reason": result.reason[:2000],
        "gate": {"report": result.gate.to_dict() if result.gate else None, "diagnosis": result.diagnosis,
                 "verdict": verdict, "evidence": summary["evidence"], "estimate": summary["estimate"]}})
    return {**summary, "state": state, "sha256": meta.sha256}


VERDICTS = ("promote", "approve", "reject", "nothing")


def verdict_of(result) -> str:
    """The heal's verdict (promote, approve, reject, nothing; shm_operator.decisions reads it).
    A HealResult older than verdicts gets one from `promotable`: promote or reject, or nothing
    without a candidate."""
    verdict = getattr(result, "verdict", None)
    if verdict is not None:
        if verdict not in VERDICTS:
            raise ValueError(f"heal returned verdict {verdict!r}, not one of {', '.join(VERDICTS)}")
        return verdict
    if result.candidate is None:
        return "nothing"
    return "promote" if result.promotable else "reject"


def estimate_of(result) -> dict:
    """The label-free accuracy estimate, before (served) and after (candidate); null = unknown."""
    raw = getattr(result, "estimate", None)
    if not isinstance(raw, dict) or not raw:
        return {"estimator": "", "before": None, "after": None, "note": "this heal gives no accuracy estimate"}

    def number(value):
        return round(float(value), 4) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) else None

    return {"estimator": str(raw.get("estimator") or ""), "before": number(raw.get("before")),
            "after": number(raw.get("after")), "note": str(raw.get("note") or "")}


def fit_termination(result: dict) -> str:
    """The result as compact JSON under Kubernetes' 4 KiB: what trims first is the evidence (each
    line shortened, then the last lines dropped, counted), then the estimate's note, then the
    reason. The verdict and the names the operator acts on are never trimmed."""
    def text(r):
        return json.dumps(r, separators=(",", ":"))

    def fits(r):
        return len(text(r).encode()) <= TERMINATION_LIMIT

    evidence = list(result.get("evidence") or [])
    if not fits(result) and evidence:
        evidence = [e if len(e) <= 200 else e[:197] + "..." for e in evidence]
        result = {**result, "evidence": evidence}
    kept = len(evidence)
    while not fits(result) and kept > 0:
        kept -= 1
        result = {**result, "evidence": evidence[:kept] + [f"... {len(evidence) - kept} more not shown"]}
    estimate = result.get("estimate")
    if not fits(result) and isinstance(estimate, dict) and len(estimate.get("note") or "") > 100:
        result = {**result, "estimate": {**estimate, "note": estimate["note"][:97] + "..."}}
    while not fits(result) and len(result.get("reason", "")) > 20:
        result = {**result, "reason": result["reason"][: len(result["reason"]) // 2] + "..."}
    return text(result)


def write_termination(path: str, result: dict) -> None:
    """The operator parses this; keep it under Kubernetes' 4 KiB limit (fit_termination)."""
    result = {k: redact(v) if isinstance(v, str) else
              [redact(e) if isinstance(e, str) else e for e in v] if isinstance(v, list) else v
              for k, v in result.items()}
    if isinstance(result.get("estimate"), dict) and isinstance(result["estimate"].get("note"), str):
        result["estimate"] = {**result["estimate"], "note": redact(result["estimate"]["note"])}
    text = fit_termination(result)
    try:
        Path(path).write_text(text)
    except OSError as err:  # outside Kubernetes the path may not exist; stdout still has it
        print(f"cannot write termination log {path}: {err}", file=sys.stderr)
    print(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Heal a SelfHealingModel's adapter from sampled traffic.")
    # From the environment by default: the operator passes it as SELFHEAL_STORAGE_URI, not as an
    # argument, so a URI with credentials is not in the Job's args or the process list.
    parser.add_argument("--storage-uri", default=os.environ.get("SELFHEAL_STORAGE_URI"),
                        help="fsspec URI of registry and traffic (default $SELFHEAL_STORAGE_URI)")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--model", required=True, help="the SelfHealingModel's name")
    parser.add_argument("--model-dir", required=True, help="backbone, reference.json and rules.yaml")
    parser.add_argument("--parent", default=BASE_VERSION, help="the adapter to heal from (last good)")
    parser.add_argument("--version", required=True, help="name of the new adapter version")
    parser.add_argument("--config", help="JSON/YAML config file rendered from the spec")
    parser.add_argument("--config-json", help="the same config inline (what the operator passes)")
    parser.add_argument("--job-name", default="")
    parser.add_argument("--since", help="ISO time: train only on traffic sampled after it (the drift's onset)")
    parser.add_argument("--wait-for-rows", type=float, default=30.0,
                        help="seconds to wait for a full training window of rows after --since (default 30)")
    parser.add_argument("--termination-log", default=os.environ.get("TERMINATION_MESSAGE_PATH", "/dev/termination-log"),
                        help="where the result JSON goes (default $TERMINATION_MESSAGE_PATH or /dev/termination-log)")
    args = parser.parse_args(argv)
    if not args.storage_uri:
        parser.error("--storage-uri or $SELFHEAL_STORAGE_URI is required")
    try:
        result = run(args)
    except (AdapterError, RegistryError, ValueError, OSError, KeyError) as err:
        write_termination(args.termination_log, {"version": args.version, "parent": args.parent,
                                                 "error": f"{type(err).__name__}: {err}"})
        return 1
    except Exception as err:  # anything else is a bug: report it, and keep the traceback in the log
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
        write_termination(args.termination_log, {"version": args.version, "parent": args.parent,
                                                 "error": f"unexpected {type(err).__name__}: {err}"})
        return 1
    write_termination(args.termination_log, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
