"""`python -m examples.demo` end to end, as `make demo` runs it (plain-line mode): the heal, the
recovery and the kubectl rollback/roll-forward happen, the JSON and the plot are written, and no
process of the demo is left behind. About 2 minutes on 2 cores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS = {"clean_accuracy", "drifted_accuracy", "healed_accuracy", "labels_used", "requests",
        "failed_requests", "time_to_heal_s", "rollback_ok"}


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or environment (the operator's KUBECONFIG) names `text`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline + environ and state != "Z" and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def test_demo_heals_rolls_back_and_forward_and_cleans_up(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    result = subprocess.run([sys.executable, "-m", "examples.demo", "--out", str(out), "--workdir", str(work),
                             "--no-live"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary) == KEYS
    assert summary["clean_accuracy"] > 0.95 and summary["drifted_accuracy"] < 0.5
    assert summary["healed_accuracy"] >= 0.9
    assert summary["labels_used"] == 0 and summary["failed_requests"] == 0 and summary["rollback_ok"] is True
    assert 0 < summary["time_to_heal_s"] < 180 and summary["requests"] > 1000
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stage in ("clean", "drifted", "healed", "rolled back", "rolled forward", "time to heal"):
        assert stage in result.stdout
    assert processes_mentioning(str(work)) == []


def test_demo_refuses_to_empty_a_foreign_directory(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = subprocess.run([sys.executable, "-m", "examples.demo", "--out", str(tmp_path / "out"),
                             "--workdir", str(tmp_path), "--no-live"], cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONSAFEPATH": "1"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "not empty and was not made by the demo" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
