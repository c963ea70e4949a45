"""The pure parts of ``benchmarks/peers.py``: its options, the figures it computes, its tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import peers


def test_options_name_figures_and_libraries() -> None:
    args = peers.parse_args(["--quick", "--only", "a", "c", "--libraries", "coditect", "saq"])
    assert args.quick
    assert args.only == ["a", "c"]
    assert args.libraries == ["coditect", "saq"]
    defaults = peers.parse_args([])
    assert defaults.only is None
    assert defaults.libraries is None
    assert not defaults.setup
    with pytest.raises(SystemExit):
        peers.parse_args(["--libraries", "celery"])


def test_every_library_runs_its_own_worker_command() -> None:
    assert set(peers.LIBRARIES) == {"coditect", "saq", "dramatiq", "taskiq", "arq", "arq-10ms"}
    assert peers.LIBRARIES["dramatiq"].worker_args(500)[-2:] == ["--threads", "500"]
    assert "--max-async-tasks" in peers.LIBRARIES["taskiq"].worker_args(100)
    assert peers.LIBRARIES["arq-10ms"].env == {"BENCH_PEERS_POLL_S": "0.01"}
    assert [library for library in peers.LIBRARIES.values() if library.peers_venv] == [
        peers.LIBRARIES[name] for name in ("saq", "dramatiq", "taskiq")
    ]


def test_cpu_per_thousand_jobs_counts_the_client_and_everything_else() -> None:
    answer = {"elapsed_s": 2.0, "cpu_s": 0.5}
    assert peers.figure_values(peers.FIGURES["a"], 500, answer, 1.0) == {
        "makespan_s": 2.0,
        "cpu_s_per_1k": 3.0,
    }
    assert peers.figure_values(peers.FIGURES["c"], 500, answer, 1.0) == {"makespan_s": 2.0}
    trips = {"samples_ms": [float(ms) for ms in range(1, 102)], "cpu_s": 0.1}
    assert peers.figure_values(peers.FIGURES["b"], 101, trips, 0.0) == {
        "p50_ms": 51.0,
        "p99_ms": 100.0,
        "max_ms": 101.0,
    }


def _figure() -> peers.FigureOut:
    figure = peers.FigureOut(peers.FIGURES["a"], jobs=5000, reps=3, others_cpu_share=0.04)
    fast = peers.Row("coditect", versions={"coditect": "0.1.0"}, jobs=5000)
    slow = peers.Row("saq", versions={"saq": "0.26.4"}, jobs=5000)
    broken = peers.Row("taskiq", error="WRONG RESULTS: 3 of 5000 results differ")
    for row, base in ((slow, 4.0), (fast, 1.0)):
        for extra in (0.3, 0.0, 0.1):
            row.add({"makespan_s": base + extra, "cpu_s_per_1k": base / 4}, warmup=False)
        row.add({"makespan_s": 9.0, "cpu_s_per_1k": 9.0}, warmup=True)
    figure.rows = [slow, broken, fast]
    return figure


def test_table_puts_the_fastest_first_with_median_and_range_and_keeps_errors() -> None:
    header, *rows = peers.table(_figure())
    assert header[:5] == ["library", "version", "workers x concurrency", "makespan s", "CPU-s per 1k jobs"]
    assert rows[0][:5] == ["coditect", "0.1.0", "2 x 100", "1.10 (1.00-1.30)", "0.250 (0.250-0.250)"]
    assert rows[1][:4] == ["saq", "0.26.4", "2 x 100", "4.10 (4.00-4.30)"]
    assert rows[2][0] == "taskiq"
    assert rows[2][3] == "-"
    assert rows[2][-1].startswith("WRONG RESULTS")


def test_reports_hold_the_tables_and_every_raw_value(tmp_path: Path) -> None:
    figure = _figure()
    json_path, md_path = peers.write_reports([figure], {"date": "today", "quick": False}, tmp_path)
    document = json.loads(json_path.read_text())
    saq = document["figures"]["a"]["libraries"]["saq"]
    assert saq["values"]["makespan_s"] == [4.3, 4.0, 4.1]
    assert saq["warmup"]["makespan_s"] == 9.0
    assert document["figures"]["a"]["concurrency_per_worker"] == 100
    assert document["errors"] == {"a: taskiq": "WRONG RESULTS: 3 of 5000 results differ"}
    markdown = md_path.read_text()
    assert "| coditect | 0.1.0 | 2 x 100 | 1.10 (1.00-1.30) |" in markdown
    assert "other processes used 4% of the CPU" in markdown
    assert "Versions: saq: saq 0.26.4; coditect: coditect 0.1.0." in markdown
