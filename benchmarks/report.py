"""The benchmark's output: a text table, the same table in markdown, and the JSON with every raw value."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import arq.version
import redis
import redis.utils

from benchmarks.harness import REPO_ROOT
from benchmarks.metrics import FigureResult, Metric
from tests.support.redis_server import RedisServer

__all__ = ["machine_info", "render_markdown", "render_table", "write_reports"]

COLUMNS = ("figure", "metric", "median", "target", "result", "notes")


def machine_info(server: RedisServer, *, quick: bool) -> dict[str, Any]:
    with server.client() as client:
        redis_version = client.info("server")["redis_version"]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_server": redis_version,
        "redis_py": redis.__version__,
        "hiredis": redis.utils.HIREDIS_AVAILABLE,
        "arq": arq.version.VERSION,
        "git": _git_revision(),
        "loadavg_start": loadavg(),
        "quick": quick,
    }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "?"


def _git_revision() -> str:
    """The commit measured, ``+dirty`` when tracked files differ from it (read-only git commands)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "diff-index", "--quiet", "HEAD", "--"],
            capture_output=True,
            timeout=10,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + ("+dirty" if dirty else "")


# -- formatting --------------------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "tasks/s":
        return f"{value:,.0f} tasks/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.3f} {unit}"


def _verdict(metric: Metric, quick: bool) -> str:
    if metric.passed is None:
        return "context"
    verdict = "pass" if metric.passed else "MISS"
    return f"{verdict} (quick)" if quick else verdict


def _spread(metric: Metric) -> str:
    if len(metric.values) == 1:
        return "n=1"
    low, high = min(metric.values), max(metric.values)
    return f"n={len(metric.values)}, {fmt(low, metric.unit)} .. {fmt(high, metric.unit)}"


def table_rows(figures: Sequence[FigureResult], quick: bool) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for figure in figures:
        if figure.error is not None:
            rows.append((figure.name, figure.title, "-", "-", "ERROR", figure.error))
        for metric in figure.metrics:
            target = "-" if metric.target is None else f"{metric.target} {metric.unit}"
            notes = "; ".join(part for part in (_spread(metric), metric.notes) if part)
            rows.append(
                (
                    figure.name,
                    metric.name,
                    fmt(metric.median, metric.unit),
                    target,
                    _verdict(metric, quick),
                    notes,
                )
            )
    return rows


def noise_line(figures: Sequence[FigureResult]) -> str:
    """How much of the machine other processes took while each figure ran (0 %: a quiet machine)."""
    shares = ", ".join(
        f"{figure.name} {figure.others_cpu_share:.0%}"
        for figure in figures
        if figure.others_cpu_share is not None
    )
    return f"CPU used by other processes on this machine during each figure: {shares}"


def render_table(figures: Sequence[FigureResult], quick: bool) -> str:
    rows = [COLUMNS, *table_rows(figures, quick)]
    # Every column but the notes is padded; the notes run on to the end of the line.
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]
    lines.insert(1, "-" * min(160, max(len(line) for line in lines)))
    return "\n".join(line.rstrip() for line in [*lines, "", noise_line(figures)])


def render_markdown(figures: Sequence[FigureResult], machine: dict[str, Any], quick: bool) -> str:
    header = (
        f"# Executor performance ({machine['date']})\n\n"
        f"{machine['cores']} cores ({machine['cpu']}), Python {machine['python']}, "
        f"redis-server {machine['redis_server']}, redis-py {machine['redis_py']} "
        f"(hiredis: {machine['hiredis']}), ARQ {machine['arq']}, commit {machine['git']}, "
        f"load average {machine['loadavg_start']} at the start.\n"
    )
    if quick:
        header += "\n**Quick run**: fewer repetitions and smaller sizes; pass/fail is only indicative.\n"
    cells = [COLUMNS, tuple("---" for _ in COLUMNS), *table_rows(figures, quick)]
    table = "\n".join("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in cells)
    return f"{header}\n{table}\n\n{noise_line(figures)}.\n"


def write_reports(
    figures: Sequence[FigureResult], machine: dict[str, Any], out_dir: Path, *, quick: bool
) -> tuple[Path, Path]:
    """``executor_performance.json`` (every raw value) and ``executor_performance.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "executor_performance",
        "quick": quick,
        "machine": machine,
        "figures": {figure.name: figure.to_json() for figure in figures},
        "errors": {figure.name: figure.error for figure in figures if figure.error is not None},
        "targets_missed": [
            f"{figure.name}: {metric.name}"
            for figure in figures
            for metric in figure.metrics
            if metric.passed is False
        ],
    }
    document["passed"] = not document["errors"] and not document["targets_missed"]
    json_path = out_dir / "executor_performance.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    md_path = out_dir / "executor_performance.md"
    md_path.write_text(render_markdown(figures, machine, quick))
    return json_path, md_path
