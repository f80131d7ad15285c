"""The serving benchmark runs end to end (real TorchServe, both handlers) and reports sane numbers."""
from __future__ import annotations

import json

import pytest

from bench.serving import main

pytestmark = pytest.mark.timeout(300)


def test_quick_serving_benchmark_reports_both_handlers(tmp_path, capsys):
    out = tmp_path / "serving.json"
    assert main(["--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    for name in ("selfheal", "plain"):
        run = report["http"][name]
        assert run["requests"] == report["setup"]["requests_per_round"] and run["errors"] == 0
        assert run["throughput_rps"] > 0 and 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"]
    for case in ("1_row", "64_row"):
        assert report["in_process"][case]["selfheal_us"] > 0 and report["in_process"][case]["plain_us"] > 0
    assert "over HTTP" in capsys.readouterr().out
    assert report["hotswap_failed"] == 0 and report["hotswap_requests"] > 0
    assert report["p50_ratio"] > 0 and report["throughput_ratio"] > 0 and report["http"]["hot_swap"]["wrong_answers"] == 0
