"""Bar charts of the last hour, laid out for inline SVG: one bar per minute, stacked by kind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["Bar", "BarChart", "bar_chart"]

WIDTH = 720
HEIGHT = 160
LEFT = 84
BOTTOM = 20
TOP = 8


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str
    tip: str


@dataclass(frozen=True, slots=True)
class BarChart:
    bars: list[Bar]
    width: int
    height: int
    left: int
    baseline: float
    top_label: str
    first_label: str
    last_label: str
    empty: str


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M")


def bar_chart(
    minutes: Sequence[int],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    unit: str = "",
    digits: int = 0,
    empty_label: str = "nothing in the last hour",
) -> BarChart:
    """Stacked bars: ``minutes`` (each minute's start, ms) and, per kind, one value per minute."""
    totals = [sum(values[i] for _, values in series) for i in range(len(minutes))]
    peak = max(totals, default=0.0)
    scale = (HEIGHT - TOP - BOTTOM) / peak if peak > 0 else 0.0
    step = (WIDTH - LEFT) / max(1, len(minutes))
    baseline = float(HEIGHT - BOTTOM)
    bars = []
    for index, start in enumerate(minutes):
        y = baseline
        for kind, values in series:
            value = values[index]
            if value <= 0:
                continue
            height = value * scale
            y -= height
            tip = f"{_clock(start)} UTC: {value:.{digits}f}{unit} {kind}"
            bars.append(Bar(LEFT + index * step + 1, y, max(1.0, step - 2), height, kind, tip))
    return BarChart(
        bars=bars,
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        baseline=baseline,
        top_label=f"{peak:.{digits}f}{unit}",
        first_label=_clock(minutes[0]) if minutes else "",
        last_label=_clock(minutes[-1]) if minutes else "",
        empty=empty_label if peak <= 0 else "",
    )
