"""What a benchmark figure reports: values per repetition, their median, a target, and the noise around it."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["CpuSample", "FigureResult", "Metric", "Target"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Target:
    """A bound the median must respect, e.g. ``Target("<=", 2.1)``."""

    op: Literal["<=", ">"]
    value: float

    def met_by(self, measured: float) -> bool:
        return measured <= self.value if self.op == "<=" else measured > self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(slots=True)
class Metric:
    """One row of the table: every repetition's value, their median, and the target (None: context)."""

    name: str
    unit: str
    values: list[float]
    target: Target | None = None
    notes: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.target.met_by(self.median)

    def to_json(self) -> dict[str, Any]:
        target = None if self.target is None else {"op": self.target.op, "value": self.target.value}
        return {
            "name": self.name,
            "unit": self.unit,
            "values": self.values,
            "median": self.median,
            "target": target,
            "passed": self.passed,
            "notes": self.notes,
        }


@dataclass(slots=True)
class FigureResult:
    """What one figure measured, with its parameters and raw data; ``error`` if it could not finish."""

    name: str
    title: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0
    loadavg_before: str = ""
    others_cpu_share: float | None = None  # the machine's CPU used by other processes meanwhile

    def add(self, metric: Metric) -> None:
        self.metrics.append(metric)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "params": self.params,
            "metrics": [metric.to_json() for metric in self.metrics],
            "raw": self.raw,
            "error": self.error,
            "duration_s": round(self.duration_s, 3),
            "loadavg_before": self.loadavg_before,
            "others_cpu_share": self.others_cpu_share,
        }


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds so far: the whole machine's busy and total time, and this benchmark's own share."""

    machine_busy_s: float
    machine_total_s: float
    ours_s: float

    @classmethod
    def take(cls, redis_cpu_s: float) -> CpuSample:
        """Ours: this process, its children that have exited (every figure's workers) and its Redis."""
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        )
        total = user + nice + system + idle + iowait + irq + softirq + steal
        times = os.times()
        ours = times.user + times.system + times.children_user + times.children_system + redis_cpu_s
        return cls((total - idle - iowait) / CLOCK_TICKS, total / CLOCK_TICKS, ours)

    def others_share_since(self, earlier: CpuSample) -> float:
        """The fraction of the machine that other processes used since ``earlier``: noise absorbed."""
        others = (self.machine_busy_s - earlier.machine_busy_s) - (self.ours_s - earlier.ours_s)
        return max(0.0, others) / max(self.machine_total_s - earlier.machine_total_s, 1e-9)
