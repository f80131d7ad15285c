"""The healing Job's entrypoint: `python -m model_handler.heal ...` (ARCHITECTURE.md §4).

Reads recent sampled traffic from the storage URI, heals the parent adapter with
`model_handler.healing.heal`, writes the candidate (promotable or not) to the registry, and writes a
short JSON result to the termination log, where the operator reads it from the pod status.
Exit 0 when healing ran, whatever the gate said; exit 1 on an error (also reported as JSON).

Config file (`--config`, JSON or YAML; the operator renders it from the SelfHealingModel spec into
a ConfigMap of the Job's own and mounts it read-only, so its size is not bound by argv limits):
    rules: [{name, when, label, weight, kind}]   # default: the model directory's rules.yaml
    healing: {trainingWindowRows, <any HealConfig field in camelCase: minRows, ruleWeight, ...>}
    promotion: {<any GateConfig field in camelCase: maxClassRateRatio, maxDisagreement, ...>}
Keys are the config dataclasses' own field names in camelCase (`dataclasses.fields`), so a field
added to HealConfig or GateConfig is accepted without a change here; an unknown key is an error
that names it.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import traceback
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

# The `healing` keys that are no HealConfig field: how many rows the Job reads, and how long it
# waits for them (defaults for a Job run by hand, without the operator's config)
WINDOW_KEY = "trainingWindowRows"
WAIT_KEY = "waitForRowsSeconds"
DEFAULT_WINDOW_ROWS = 3000
DEFAULT_WAIT_SECONDS = 120.0   # both as the CRD's (tests/test_crd.py: the defaults mirror each other)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def config_keys(cls) -> dict[str, str]:
    """{camelCase key: field name} of a config dataclass's fields, less a nested config (HealConfig.gate
    has its own section, `promotion`)."""
    return {camel(f.name): f.name for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(f.default_factory)}


def section(config: dict, name: str, cls, extra: frozenset = frozenset()) -> dict:
    """`config[name]` as keyword arguments of `cls`; an unknown key is an error naming it."""
    values = config.get(name) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config section {name!r} must be a mapping, not {type(values).__name__}")
    keys = config_keys(cls)
    unknown = sorted(set(values) - set(keys) - extra)
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(f'{name}.{k}' for k in unknown)} "
                         f"({cls.__name__} takes {', '.join(sorted(keys))})")
    return {keys[k]: v for k, v in values.items() if k in keys}


def configs(config: dict) -> tuple[HealConfig, int]:
    """(HealConfig with its GateConfig, training window rows) from the config's `healing` and
    `promotion` sections; what a section leaves out keeps the dataclass's default."""
    gate = GateConfig(**section(config, "promotion", GateConfig))
    heal_config = HealConfig(**section(config, "healing", HealConfig, frozenset({WINDOW_KEY, WAIT_KEY})), gate=gate)
    return heal_config, int((config.get("healing") or {}).get(WINDOW_KEY, DEFAULT_WINDOW_ROWS))


def wait_for_rows(config: dict, override: float | None = None) -> float:
    """Seconds the Job waits for a full training window: --wait-for-rows, else the config's."""
    if override is not None:
        return float(override)
    return float((config.get("healing") or {}).get(WAIT_KEY, DEFAULT_WAIT_SECONDS))


def read_config(path: str | None, sha256: str | None = None) -> dict:
    """The config file (JSON or YAML), {} without one. With `sha256`, the file must have that digest:
    the operator names the config it created the Job for, so a ConfigMap rewritten since (or another
    one mounted) fails the Job clearly instead of healing under other rules."""
    if not path:
        if sha256:
            raise ValueError("--config-sha256 needs --config")
        return {}
    data = Path(path).read_bytes()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"config file {path} has sha256 {hashlib.sha256(data).hexdigest()}, the Job was "
                         f"created for {sha256}: its ConfigMap changed since")
    try:
        config = json.loads(data)       # what the operator writes; far faster than YAML on 0.5 MB
    except ValueError:
        config = yaml.safe_load(data) or {}
    if not isinstance(config, dict):
        raise ValueError(f"config file {path} must hold a mapping")
    return config


def run(args: argparse.Namespace) -> dict:
    model_dir = Path(args.model_dir)
    config = read_config(args.config, args.config_sha256)
    heal_config, window_rows = configs(config)
    served = load_served(model_dir, rules=config.get("rules") or None)
    model, rules, reference = served.model, served.rules, served.reference
    classes = model.spec.classes
    registry = AdapterRegistry(args.storage_uri, args.namespace, args.model)
    load_adapter(model, registry, args.parent)   # every check, the backbone hash included
    store = TrafficStore(args.storage_uri, args.namespace, args.model)
    since = datetime.fromisoformat(args.since.replace("Z", "+00:00")) if args.since else None
    x, _ = store.read_recent(window_rows, since=since)
    deadline = time.monotonic() + wait_for_rows(config, args.wait_for_rows)
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
    parser.add_argument("--config-sha256", help="the config file's expected sha256 (the operator passes it)")
    parser.add_argument("--job-name", default="")
    parser.add_argument("--since", help="ISO time: train only on traffic sampled after it (the drift's onset)")
    parser.add_argument("--wait-for-rows", type=float, default=None,
                        help="seconds to wait for a full training window of rows after --since (default: the "
                             f"config's healing.{WAIT_KEY}, else {DEFAULT_WAIT_SECONDS:g})")
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
