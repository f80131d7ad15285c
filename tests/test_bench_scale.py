"""The scale benchmark runs end to end in quick mode: a real operator over fake pods reacts to the one
drifted model, leaves the idle ones alone, and the figures it prints come from real counters."""
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_quick_scale_benchmark(tmp_path):
    out = tmp_path / "scale.json"
    run = subprocess.run([sys.executable, "-m", "bench.scale", "--quick", "--json", str(out)],
                         timeout=240, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    sizes = result["config"]["sizes"]
    assert [r["models"] for r in result["runs"]] == sizes and len(sizes) >= 2
    interval = result["config"]["check_interval_s"]
    for r in result["runs"]:
        api = r["api"]
        # every model's status is written: the counter saw the operator's calls; its pods come from
        # the operator's pod index (a watch), never a `list pods` per check
        assert api["operator_per_min"] > 0 and api["operator_by_kind_per_min"].get("list pods", 0) == 0
        # both are rounded (the total to 0.1, per model to 0.01): allow for that, nothing more
        assert api["operator_per_model_per_min"] == pytest.approx(api["operator_per_min"] / r["models"],
                                                                   abs=0.05 / r["models"] + 0.005 + 1e-9)
        assert r["operator"]["rss_mib"] > 50 and r["operator"]["cpu_percent_of_one_core"] >= 0
        assert r["operator"]["log_errors"] == 0
        # the same window with every model idle (its pods serve nothing new): no window to score and
        # no status to write, so fewer calls than busy; the RSS is the same process's
        idle = r["idle"]
        assert (r["phase"], idle["phase"], idle["models"]) == ("busy", "idle", r["models"])
        assert idle["api"]["operator_per_min"] < api["operator_per_min"], (idle["api"], api)
        assert idle["api"]["operator_by_kind_per_min"].get("patch selfhealingmodels/status", 0) < \
            api["operator_by_kind_per_min"]["patch selfhealingmodels/status"]
        assert idle["operator"]["rss_mib"] > 50 and idle["operator"]["log_errors"] == 0
        reaction = r["reaction"]
        # two drifted windows (persistence 2), one per check, plus the tick's own slack
        assert reaction["drift_detected_s"] is not None and reaction["job_created_s"] is not None, reaction
        assert reaction["job_created_s"] <= 2 * (interval + 2) + 10
    assert result["idle_models_with_jobs"] == []
    assert set(result["jobs_by_model"]) == set(result["drifted_models"]) and len(result["drifted_models"]) == len(sizes)
    assert set(result["growth_per_model"]) >= {"api_calls_per_min", "rss_mib", "cpu_percent",
                                                "idle_api_calls_per_min", "idle_rss_mib"}
    assert "API/min" in run.stdout and "growth per added model" in run.stdout


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, waiting for its parent to reap it, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:   # gone meanwhile
        return ""


def test_sigterm_stops_the_sandbox_and_the_operator(tmp_path):
    """`timeout` (or a supervisor) stops the bench with SIGTERM: the sandbox and the operator, which
    live in their own sessions and would never see that signal, stop with it."""
    bench = subprocess.Popen([sys.executable, "-m", "bench.scale", "--quick", "--workdir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in bench.stderr:
            seen.append(line)
            if match := re.search(r"sandbox pid (\d+), operator pid (\d+)", line):
                break
        assert match, "".join(seen)[-3000:]
        children = [int(pid) for pid in match.groups()]
        assert all(alive(pid) for pid in children)
        bench.send_signal(signal.SIGTERM)
        err = bench.stderr.read()
        assert bench.wait(timeout=90) == 130, err[-3000:]
    finally:
        if bench.poll() is None:
            bench.kill()
    assert "interrupted" in err
    assert [pid for pid in children if alive(pid)] == []
    workdir = str(tmp_path)
    stray = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and alive(int(p.name))
             and workdir in cmdline(p)]
    assert stray == []
