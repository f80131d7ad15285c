"""docs/operations.md's troubleshooting table names every condition type, condition reason and Event
reason the operator emits (found in operator/ by tests/operator/reasons.py): a reason added to the
code without a line saying what to do fails here."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from reasons import Emitted, Source, Unresolved

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def troubleshooting_table(text: str) -> dict[str, list[str]]:
    """Each backticked word of the table's `reason` column -> the `kind` column of its rows."""
    section = text.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    named: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and not set(cells[0]) <= {"-", " "}:
            for word in re.findall(r"`([A-Za-z]+)`", cells[1]):
                named.setdefault(word, []).append(cells[0])
    return named


def missing(emitted: list[Emitted], table: dict[str, list[str]]) -> list[str]:
    """What the table lacks: a row for the value, of the right kind (an Event reason's row says
    Event, a condition reason's names the condition, a type has a `condition type` row)."""
    gaps = []
    for e in emitted:
        kinds = table.get(e.value)
        if not kinds:
            gaps.append(f"{e.kind} {e.value} ({e.where})")
        elif e.kind == "event" and not any("Event" in k for k in kinds):
            gaps.append(f"event {e.value} ({e.where}): its row does not say Event")
        elif e.kind == "condition" and not any(k.startswith("condition `") for k in kinds):
            gaps.append(f"condition reason {e.value} ({e.where}): its row names no condition")
        elif e.kind == "type" and "condition type" not in kinds:
            gaps.append(f"condition type {e.value} ({e.where}): no `condition type` row")
    return sorted(set(gaps))


def test_every_reason_the_operator_emits_is_in_the_troubleshooting_table():
    emitted = Source().emitted()
    values = {(e.kind, e.value) for e in emitted}
    # the reader finds the literal, the computed and the inherited ones
    assert {("event", "HealFailed"), ("condition", "InputShift"), ("condition", "SeveralSignals"),
            ("condition", "PodsUnreachable"), ("condition", "Promoted"), ("condition", "Failed"),
            ("condition", "AdapterRefused"), ("event", "NeedsApproval"), ("event", "CandidateReady"),
            ("type", "Degraded")} <= values
    assert missing(emitted, troubleshooting_table(DOC.read_text())) == []


def test_a_reason_missing_from_the_table_is_named():
    table = troubleshooting_table(DOC.read_text())
    del table["HealFailed"]
    emitted = [Emitted("event", "HealFailed", "monitor.py:1"), Emitted("event", "InputShift", "monitor.py:2"),
               Emitted("type", "Healing", "monitor.py:3")]
    assert missing(emitted, table) == ["event HealFailed (monitor.py:1)",
                                       "event InputShift (monitor.py:2): its row does not say Event"]


def test_a_reason_the_reader_cannot_follow_fails(tmp_path):
    (tmp_path / "handler.py").write_text("import kopf\n\ndef f(body, values):\n"
                                         "    kopf.warn(body, reason=values.pick(), message='')\n")
    with pytest.raises(Unresolved, match="values.pick"):
        Source(tmp_path).emitted()
    (tmp_path / "handler.py").write_text("import kopf\nCODES = {'a': 'Alpha', 'b': 'Beta'}\n\n"
                                         "def f(body, k, code='Gamma'):\n"
                                         "    kopf.warn(body, reason=CODES[k], message='')\n"
                                         "    kopf.info(body, reason=code, message='')\n\n"
                                         "def g(body):\n    f(body, 'a', code='Delta')\n")
    assert {e.value for e in Source(tmp_path).emitted()} == {"Alpha", "Beta", "Gamma", "Delta"}
    assert ast  # the reader is ast-based: nothing of operator/ is imported or run
