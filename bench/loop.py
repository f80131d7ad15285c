"""The operator's loop on a simulated clock: what pods + operator + heal Job do to a row stream.

Every decision is the operator's own code (`shm_operator.policy`, `decisions`, `signals`): only
Kubernetes, storage and time are simulated.

- Traffic arrives at `rows_per_second`; the operator checks every `spec.drift.checkIntervalSeconds`.
  The pod's cumulative sketch is read at each check and summed into a pending window exactly as
  `signals.WindowState` does; a window is scored once it holds `spec.drift.windowRows` rows, with
  `spec.drift.minSamples` (`policy.score`), and fed to the trigger rebuilt from the spec and the
  saved trigger state (`policy.judge_window`), which also sets `since` and `onset`.
- `decisions.should_heal` decides on the simulated clock: cooldownSeconds and maxHealsPerDay are in
  real seconds, a running Job, a rollout under watch or a candidate awaiting approval block a heal.
- Pods sample `spec.serving.sampleFraction` of the rows into the traffic store. The heal Job
  (as `model_handler.heal`) reads the sampled rows since the drift's onset, waiting up to
  `spec.healing.waitForRowsSeconds` for `trainingWindowRows` of them, heals the last good adapter
  with `heal()`, and writes the termination JSON the operator parses (`decisions.parse_job_result`). The operator
  reads it at the first check after the Job finished: `promotion_action` (mode from the spec), or
  the heal result's `verdict` where it has one (promote / approve / reject).
- A promotion rolls out at once (RollingRestart; the new pods' windows start afresh) after a
  window of the old adapter gave the watch its baseline; the watch (`policy.rollout_verdict`)
  judges every window for `rollback.watchSeconds` and rolls back to the last good adapter on harm.

Default rate: one window per check (windowRows / checkIntervalSeconds rows a second: 500 rows
each 30 s, 1,000 a minute with the example spec). The default cooldown (1800 s) then spans 60
windows, and the rollback watch (600 s) 20.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import yaml

from model_handler.healing import HealConfig, heal
from model_handler.model import SelfHealingNet
from model_handler.rules import RuleSet
from model_handler.sketches import DriftSketch, ReferenceProfile
from shm_operator import decisions, policy
from shm_operator.crd import Phase, RollbackSpec, Rule
from shm_operator.signals import WindowState, class_rates
from shm_operator.status import full_spec

EXAMPLE_SPEC = Path(__file__).resolve().parents[1] / "examples" / "fraud" / "selfhealingmodel.yaml"
JOB_RUN_SECONDS = 5.0       # a heal's own run time, simulated (it decides which check reads the result)
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
POD = "pod-0"


def spec_name(name: str) -> str:
    """A class name as the CRD accepts it (Adult's "<=50K" becomes "le50K")."""
    for old, new in (("<=", "le"), (">=", "ge"), ("<", "lt"), (">", "gt")):
        name = name.replace(old, new)
    return re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^A-Za-z0-9_.-]", "_", name))[:63] or "class"


def scenario_spec(features: list[str], classes: list[str], rules: list[dict], base: Path = EXAMPLE_SPEC,
                  overrides: dict | None = None) -> dict:
    """The example SelfHealingModel's spec with a scenario's features, classes and rules, every
    default filled in (`status.full_spec`), after the operator's own semantic validation. Class
    names the CRD would refuse are renamed in the spec only (`spec_name`)."""
    spec = yaml.safe_load(base.read_text())["spec"]
    known = set(Rule.model_fields) | {f.alias for f in Rule.model_fields.values() if f.alias}
    spec.update(features=list(features), classes=[spec_name(c) for c in classes],
                rules=[{**{k: v for k, v in r.items() if k in known}, "label": spec_name(r["label"])} for r in rules])
    for section, values in (overrides or {}).items():
        spec[section] = {**spec.get(section, {}), **values}
    problems = decisions.validate_spec_semantics(spec)
    if problems:
        raise ValueError(f"scenario spec is invalid: {problems}")
    return full_spec(spec)


def heal_config(spec: dict, seed: int) -> tuple[HealConfig, int]:
    """What the heal Job builds from the operator's config (`heal_job_config` -> heal.configs)."""
    from model_handler.heal import configs
    from shm_operator.crd import SelfHealingModelSpec
    config = SelfHealingModelSpec.model_validate(spec).heal_job_config()
    config["healing"]["seed"] = seed
    return configs(config)


@dataclass
class Traffic:
    rows_per_second: float | None = None    # None: one window per check (windowRows / checkIntervalSeconds)
    job_wait_seconds: float | None = None   # None: the spec's healing.waitForRowsSeconds, as the Job reads it
    job_run_seconds: float = JOB_RUN_SECONDS


@dataclass
class Job:
    version: str
    parent: str
    started: float          # simulated seconds
    onset: float | None
    finished: float | None = None
    rows: np.ndarray | None = None
    result: dict | None = None


@dataclass
class OperatorLoop:
    """One SelfHealingModel: pods serving `served`, the operator's status, the heal Jobs."""

    base: SelfHealingNet
    rules: RuleSet
    reference: ReferenceProfile
    spec: dict
    seed: int = 0
    traffic: Traffic = field(default_factory=Traffic)
    # state (what status and memo hold in the operator)
    t: float = 0.0
    rows_seen: int = 0
    models: dict = field(default_factory=dict)          # version -> SelfHealingNet (the registry)
    desired: str = "base"
    last_good: str = "base"
    drift: dict = field(default_factory=dict)            # status.drift
    window: WindowState = field(default_factory=WindowState)
    cumulative: DriftSketch | None = None
    store_x: list = field(default_factory=list)          # sampled rows (the traffic store)
    store_t: list = field(default_factory=list)
    job: Job | None = None
    last_heal_finished: float | None = None
    recent_heal_starts: list = field(default_factory=list)
    candidate: str | None = None
    rollout: dict | None = None
    pending_promotion: dict | None = None
    events: list = field(default_factory=list)
    counts: dict = field(default_factory=lambda: {"windows": 0, "on_windows": 0, "declared": 0, "jobs": 0,
                                                  "promotions": 0, "approvals_pending": 0, "rejected": 0,
                                                  "nothing_to_fix": 0, "failed": 0, "rollbacks": 0})
    first_declared_row: int | None = None
    promoted: list = field(default_factory=list)         # versions promoted, in order
    heal_seconds: float = 0.0
    max_input_shift: float = 0.0                         # over sufficient windows
    max_rule_conflict: float = 0.0

    def __post_init__(self) -> None:
        self.models = {"base": self.base}
        drift = self.spec["drift"]
        self.check_seconds = float(drift["checkIntervalSeconds"])
        self.rate = self.traffic.rows_per_second or drift["windowRows"] / self.check_seconds
        self.heal_cfg, self.training_rows = heal_config(self.spec, self.seed)
        self.limits = decisions.RollbackLimits.from_spec(RollbackSpec.model_validate(self.spec["promotion"]["rollback"]))
        self.rng = np.random.default_rng(self.seed + 7919)
        self.sample_fraction = float(self.spec["serving"]["sampleFraction"])
        self._new_pods()

    # ---- the pods --------------------------------------------------------------------------

    @property
    def served(self) -> SelfHealingNet:
        return self.models[self.desired]

    def _new_pods(self) -> None:
        """Fresh pods (a restart): counters from zero, first sight is the operator's baseline."""
        self.cumulative = DriftSketch.empty(self.reference, len(self.rules))
        self.window = WindowState(reference=self.reference)
        self.window.add(POD, self._snapshot())

    def _snapshot(self) -> DriftSketch:
        return DriftSketch(self.reference, {k: v.copy() for k, v in self.cumulative.counters.items()},
                           self.cumulative.rules_hash)

    def serve(self, x: np.ndarray) -> np.ndarray:
        """Rows arriving until the next check: the pod predicts, sketches and samples them."""
        probs = self.served.predict_proba(x).numpy()
        seen = self.served.restore_inputs(x)   # as the pod counts them (service.ModelService._count)
        self.cumulative.update(seen, probs, self.rules.fires(seen).numpy(), self.rules.labels.numpy())
        arrival = self.t + (np.arange(len(x)) + 1) / self.rate
        keep = self.rng.random(len(x)) < self.sample_fraction
        self.store_x.append(x[keep])
        self.store_t.append(arrival[keep])
        self.rows_seen += len(x)
        self.t += len(x) / self.rate
        return probs

    # ---- one operator check ----------------------------------------------------------------

    def now(self) -> str:
        return decisions.format_time(START + timedelta(seconds=self.t))

    def check(self) -> dict | None:
        """One tick of monitor.tick: observe_pods, follow_heal, maybe_heal, watch_rollout."""
        fresh = self._observe()
        self._follow_heal()
        self._maybe_heal()
        self._watch(fresh)
        return fresh

    def _observe(self) -> dict | None:
        self.window.add(POD, self._snapshot())
        window = self.window.take_window(self.spec["drift"]["windowRows"])
        if window is None:
            return None
        scores = policy.score(window, self.reference, self.rules, self.spec["drift"])
        judged = policy.judge_window(scores, self.spec["drift"], self.drift.get("trigger"),
                                     self.drift.get("since"), self.now())
        summary = {"samples": scores.samples, "ruleConflict": scores.rule_conflict,
                   "inputShift": scores.input_shift, "classRates": class_rates(window),
                   "trigger": judged.trigger.to_dict(), "since": judged.since, "adapter": self.desired}
        self.drift.update(summary)
        if judged.onset:
            self.drift["onset"] = judged.onset
            self.drift["onset_t"] = self.t
        self.counts["windows"] += 1
        if not scores.insufficient:
            self.max_input_shift = max(self.max_input_shift, scores.input_shift)
            self.max_rule_conflict = max(self.max_rule_conflict, scores.rule_conflict)
        if not scores.insufficient and judged.trigger.signals:   # any signal on (the trigger's rule)
            self.counts["on_windows"] += 1
        if judged.drifting and not judged.was:
            self.counts["declared"] += 1
            if self.first_declared_row is None:
                self.first_declared_row = self.rows_seen
            self.events.append({"t": self.t, "row": self.rows_seen, "event": "DriftDetected",
                                "input_shift": round(scores.input_shift, 3),
                                "rule_conflict": round(scores.rule_conflict, 3),
                                "label_shift": round(scores.label_shift, 3), "signals": list(judged.trigger.signals),
                                "input_p": scores.input_p, "label_p": scores.label_p})
        return summary

    def _maybe_heal(self) -> None:
        running = self.job.version if self.job is not None and self.job.result is None else None
        t = START + timedelta(seconds=self.t)
        finished = START + timedelta(seconds=self.last_heal_finished) if self.last_heal_finished is not None else None
        recent = decisions.recent_heals([START + timedelta(seconds=s) for s in self.recent_heal_starts], t)
        decision = decisions.should_heal(
            now=t, drifting=bool((self.drift.get("trigger") or {}).get("drifting")), mode=self.spec["healing"]["mode"],
            healing_job=running, phase=Phase.ROLLING_OUT if (self.rollout or self.pending_promotion) else None,
            candidate=self.candidate, last_heal_finished=finished,
            cooldown_seconds=self.spec["healing"]["cooldownSeconds"], recent_heal_starts=recent,
            max_heals_per_day=self.spec["healing"]["maxHealsPerDay"])
        if not decision.act:
            return
        version = decisions.next_version(list(self.models))
        self.recent_heal_starts.append(self.t)
        self.job = Job(version=version, parent=self.last_good, started=self.t, onset=self.drift.get("onset_t"))
        self.counts["jobs"] += 1
        self.events.append({"t": self.t, "row": self.rows_seen, "event": "HealStarted", "version": version,
                            "parent": self.last_good, "reason": decision.reason})

    def _job_rows(self, job: Job) -> tuple[np.ndarray, float] | None:
        """The Job's read of the traffic store: sampled rows since the onset, the last
        trainingWindowRows of them; with fewer at its start it waits up to waitForRowsSeconds for a
        full window. None while the rows it would read have not all arrived."""
        times = np.concatenate(self.store_t) if self.store_t else np.empty(0)
        rows = np.concatenate(self.store_x) if self.store_x else np.empty((0, len(self.reference.features)))
        after = times > (job.onset if job.onset is not None else -np.inf)
        wait = self.traffic.job_wait_seconds
        deadline = job.started + (self.spec["healing"]["waitForRowsSeconds"] if wait is None else wait)
        if int((after & (times <= job.started)).sum()) >= self.training_rows:
            end = job.started
        else:
            arrived = times[after & (times <= min(self.t, deadline))]
            if len(arrived) >= self.training_rows:
                end = float(arrived[self.training_rows - 1])
            elif self.t >= deadline:
                end = deadline
            else:
                return None
        chosen = np.flatnonzero(after & (times <= end))[-self.training_rows:]
        return rows[chosen].astype(np.float32), float(end)

    def _follow_heal(self) -> None:
        job = self.job
        if job is None or job.result is not None:
            return
        if job.finished is None:
            read = self._job_rows(job)
            if read is None:
                return
            job.rows, end = read
            job.finished = end + self.traffic.job_run_seconds
        if self.t < job.finished:
            return
        job.result = self._run_job(job, job.rows)
        self.last_heal_finished = self.t
        parsed = decisions.parse_job_result(json.dumps(job.result))
        verdict = job.result.get("verdict")
        if verdict in ("promote", "approve", "reject") and not parsed.error:
            # a heal that says what to do with its candidate: approve = a person must look at it
            name = {"promote": "promote", "approve": "await-approval"}.get(verdict, "reject")
            action = decisions.Promotion(name, job.result.get("reason", ""))
            if name == "promote":
                action = decisions.promotion_action(self.spec["healing"]["mode"], parsed)
        else:
            action = decisions.promotion_action(self.spec["healing"]["mode"], parsed)
        outcome = "Failed" if parsed.error else policy.heal_outcome(action, parsed)
        key = {"Promoted": "promotions", "AwaitingApproval": "approvals_pending", "Rejected": "rejected",
               "NothingToFix": "nothing_to_fix", "Failed": "failed"}[outcome]
        self.counts[key] += 1
        self.events.append({"t": self.t, "row": self.rows_seen, "event": outcome, "version": job.version,
                            "rows": job.result.get("rows"), "steps": job.result.get("steps", []),
                            "reason": action.reason[:300]})
        if outcome == "Promoted":
            self.pending_promotion = {"to": job.version, "asked": self.t,
                                      "classRates": job.result.get("classRates") or {}}
            self._try_rollout()
        elif outcome == "AwaitingApproval":
            self.candidate = job.version

    def _run_job(self, job: Job, x: np.ndarray) -> dict:
        """model_handler.heal.run on the sampled rows, as its termination JSON."""
        if len(x) < self.heal_cfg.min_rows:
            return {"version": job.version, "parent": job.parent, "state": "none", "promotable": False,
                    "rows": int(len(x)),
                    "reason": f"not enough sampled traffic: {len(x)} rows, need {self.heal_cfg.min_rows}"}
        started = time.perf_counter()
        result = heal(self.models[job.parent], x, self.rules, self.reference, self.heal_cfg)
        self.heal_seconds += time.perf_counter() - started
        summary = {"version": job.version, "parent": job.parent, "rows": int(len(x)), "steps": result.steps,
                   "promotable": result.promotable, "labelsUsed": result.labels_used,
                   "reason": result.reason[:1000], "failed": result.gate.failed if result.gate else []}
        summary["verdict"] = result.verdict
        summary["classRates"] = dict(zip(self.reference.classes, result.class_rates))
        if result.candidate is None or result.verdict == "nothing":
            return {**summary, "state": "none"}
        self.models[job.version] = result.candidate
        return {**summary, "state": "candidate" if result.verdict in ("promote", "approve") else "rejected"}

    # ---- rollout and watch -----------------------------------------------------------------

    def _try_rollout(self) -> None:
        """rollout.accept_version: a watched rollout needs a window of the serving adapter alone
        as its baseline, and waits for one (at most watchSeconds)."""
        pending = self.pending_promotion
        if pending is None:
            return
        pre = policy.baseline_of(self.drift, self.desired)
        if pre is None and self.t - pending["asked"] < self.limits.watch_seconds:
            return
        self.pending_promotion = None
        self.promoted.append(pending["to"])
        self.rollout = {"from": self.desired, "to": pending["to"], "complete": self.t, "watchedRows": 0,
                        "baseline": {**(pre or policy.baseline({})),
                                     "referenceClassRates": class_rates(self.reference.counts),
                                     "expectedClassRates": pending.get("classRates") or {}}}
        self.desired = pending["to"]
        self._new_pods()          # RollingRestart: new pods; windows hold only new-adapter traffic

    def _watch(self, fresh: dict | None) -> None:
        if self.pending_promotion is not None:
            self._try_rollout()
            return
        rollout = self.rollout
        if rollout is None:
            return
        elapsed = self.t - rollout["complete"]
        if fresh is not None:
            rollout["watchedRows"] += int(fresh["samples"])
            base = rollout["baseline"]
            decision = policy.rollout_verdict(base, fresh, base.get("referenceClassRates") or {}, self.limits,
                                              elapsed)
            if decision.act and rollout.get("from"):
                target = self.last_good or rollout["from"]
                self.events.append({"t": self.t, "row": self.rows_seen, "event": "RolledBack",
                                    "version": rollout["to"], "to": target, "reason": decision.reason[:300]})
                self.counts["rollbacks"] += 1
                self.desired = target
                self.rollout = None
                self._new_pods()
                return
        if elapsed < self.limits.watch_seconds:
            return
        self.rollout = None
        if policy.vouched(rollout["watchedRows"], self.limits):
            self.last_good = rollout["to"]


def run_stream(loop: OperatorLoop, x: np.ndarray) -> np.ndarray:
    """Serve `x` in check-sized chunks, one operator check after each; the served model's
    probabilities for every row as it arrived (prequential)."""
    per_check = max(1, int(round(loop.rate * loop.check_seconds)))
    out = []
    for start in range(0, len(x), per_check):
        out.append(loop.serve(x[start:start + per_check]))
        loop.check()
    return np.concatenate(out) if out else np.empty((0, len(loop.reference.classes)))
