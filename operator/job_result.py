"""The heal Job's result: what `python -m model_handler.heal` writes to its termination log, read
without trusting it (size, JSON, types), as a `JobResult`. Pure: no Kubernetes, no I/O.
`decisions.promotion_action` decides what a result leads to."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TERMINATION_MESSAGE_LIMIT = 4096       # bytes the kubelet keeps of a container's termination message

VERDICTS = ("promote", "approve", "reject", "nothing")
ESTIMATE_NOTE_LIMIT = 500


class _JobMessage(BaseModel):
    """The JSON `python -m model_handler.heal` writes to its termination log; unknown keys are
    ignored so a newer Job still reads."""

    model_config = ConfigDict(extra="ignore", strict=True)
    version: str | None = None
    parent: str | None = None
    state: str | None = None
    promotable: bool | None = None
    passed: bool | None = None
    verdict: Literal["promote", "approve", "reject", "nothing"] | None = None
    reason: str = ""
    steps: list[str] = []
    failed: list[str] = []
    evidence: list[str] = []
    estimate: Any = None
    class_rates: dict[str, float] = Field(default_factory=dict, alias="classRates")
    rows: int | None = None
    sha256: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class JobResult:
    """What a heal Job reported. `error` is set when it failed or its message is unusable;
    `promotable`: a candidate passed the safety checks and may be served (by the operator or, for
    the verdict approve, by a person).

    `verdict` is what the Job concluded: promote (the candidate passed the safety checks and
    independent held-out evidence supports the fix), approve (it passed the safety checks, but no
    independent evidence supports the fix: a person decides), reject (it failed a check), nothing
    (no fix was needed or possible). `evidence` names the independent checks behind it; `estimate`
    is a label-free estimate of accuracy before (served model) and after (candidate), see
    `read_estimate`. A message from a Job older than verdicts gets one from `promotable`/`state`."""

    version: str | None = None
    parent: str | None = None
    state: str | None = None
    promotable: bool = False
    reason: str = ""
    steps: tuple[str, ...] = ()
    failed_checks: tuple[str, ...] = ()
    rows: int | None = None
    sha256: str | None = None
    error: str | None = None
    verdict: str | None = None
    evidence: tuple[str, ...] = ()
    estimate: Mapping | None = None
    class_rates: Mapping[str, float] = field(default_factory=dict)   # the candidate's, held out


def read_estimate(raw) -> dict | None:
    """A Job's `estimate` as `{"estimator": str, "before": float|None, "after": float|None,
    "note": str}`. It informs people and never decides anything, so a malformed one is kept as
    unknown values with a note saying why, not an error that would throw the heal away."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        return {"estimator": "", "before": None, "after": None,
                "note": f"unreadable estimate: a {type(raw).__name__}, not an object"}
    notes = [str(raw.get("note") or "")]

    def accuracy(key: str) -> float | None:
        value = raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= 1:
            notes.append(f"{key} {value!r} is not an accuracy in [0, 1]")
            return None
        return round(float(value), 4)

    estimator = raw.get("estimator")
    return {"estimator": estimator[:100] if isinstance(estimator, str) else "",
            "before": accuracy("before"), "after": accuracy("after"),
            "note": "; ".join(filter(None, notes))[:ESTIMATE_NOTE_LIMIT]}


def parse_job_result(termination_message: str | None) -> JobResult:
    """Read the heal Job's termination message. Never raises: whatever is wrong with it becomes
    `error`, because a Job's output is input from another process and the operator must go on."""
    if not termination_message or not termination_message.strip():
        return JobResult(error="empty termination message: the heal Job wrote no result")
    size = len(termination_message.encode("utf-8", "replace"))
    if size > TERMINATION_MESSAGE_LIMIT:
        return JobResult(error=f"termination message is {size} bytes, over the {TERMINATION_MESSAGE_LIMIT} "
                               "Kubernetes keeps: it may be cut off, refusing to trust it")
    try:
        document = json.loads(termination_message)
    except json.JSONDecodeError as err:
        return JobResult(error=f"termination message is not JSON ({err.msg} at position {err.pos})")
    if not isinstance(document, dict):
        return JobResult(error=f"termination message must be a JSON object, got {type(document).__name__}")
    try:
        message = _JobMessage.model_validate(document)
    except ValidationError as err:
        return JobResult(version=document.get("version") if isinstance(document.get("version"), str) else None,
                         error="termination message: " + "; ".join(
                             f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))
    if message.error is None and message.promotable is None and message.passed is None and message.verdict is None:
        return JobResult(version=message.version, error="termination message says neither promotable nor error, "
                                                        "nor a verdict")
    verdict = message.verdict
    if verdict is not None:
        # A Job with verdicts writes `promotable` for older operators (true for promote only, so
        # they never promote what a person must approve); here the verdict says it.
        promotable = verdict in ("promote", "approve")
    else:   # a Job older than verdicts
        promotable = message.promotable if message.promotable is not None else bool(message.passed)
        if message.error is None:
            verdict = "promote" if promotable else "reject" if message.state == "rejected" else "nothing"
    return JobResult(version=message.version, parent=message.parent, state=message.state,
                     promotable=promotable and message.error is None, reason=message.reason,
                     steps=tuple(message.steps), failed_checks=tuple(message.failed), rows=message.rows,
                     sha256=message.sha256, error=f"heal Job failed: {message.error}" if message.error else None,
                     verdict=verdict if message.error is None else None, evidence=tuple(message.evidence),
                     estimate=read_estimate(message.estimate), class_rates=dict(message.class_rates))
