"""The performance benchmark still runs: two cheap figures of ``executor_performance.py --quick``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "executor_performance.py"
METRIC_KEYS = {"name", "unit", "values", "median", "target", "passed", "notes"}


def test_quick_benchmark_writes_its_report(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCHMARK), "--quick", "--only", "latency", "event-loop"]
    run = subprocess.run(
        [*command, "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "executor_performance.json").read_text())
    assert report["quick"] is True
    assert {"cores", "python", "redis_server", "date"} <= report["machine"].keys()
    assert list(report["figures"]) == ["latency", "event-loop"]
    assert report["errors"] == {}
    for figure in report["figures"].values():
        assert figure["error"] is None
        assert figure["metrics"]
        for metric in figure["metrics"]:
            assert metric.keys() == METRIC_KEYS
            assert metric["values"]
    assert "| latency | round trip p50 |" in (tmp_path / "executor_performance.md").read_text()
    assert "round trip p50" in run.stdout
