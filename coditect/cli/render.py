"""Terminal rendering for the CLI: the live progress line, the results table, the status summary.

Pure functions that return strings (the CLI decides where they go), and ``LiveLine``, which rewrites
one line of a terminal in place. Only the standard library is
imported at run time, so ``coditect --help`` stays fast.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from coditect.models import ExecutionResult

__all__ = [
    "STATUSES",
    "LiveLine",
    "ProgressSnapshot",
    "excerpt",
    "format_duration",
    "progress_line",
    "results_table",
    "status_counts",
    "status_summary",
    "summary_line",
]

# Same values and order as ``coditect.models.ExecutionStatus`` (kept here so rendering needs no pydantic).
STATUSES = ("pending", "queued", "running", "success", "failed", "timeout", "cancelled")
_SUMMARY_ORDER = ("success", "failed", "timeout", "cancelled", "running", "queued", "pending")
_SUMMARY_WORDS = {"success": "succeeded"}
_UNFINISHED = frozenset({"pending", "queued", "running"})
_HEADERS = ("TASK", "STATUS", "DURATION", "TOKENS (IN+OUT)", "OUTPUT / ERROR")
_MAX_TASK_WIDTH = 32
_MIN_EXCERPT_WIDTH = 20


class ProgressSnapshot(Protocol):
    """What ``progress_line`` reads; ``coditect.client.orchestrator.BatchProgress`` has these fields."""

    @property
    def total(self) -> int: ...
    @property
    def done(self) -> int: ...
    @property
    def running(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def elapsed_s(self) -> float: ...


def progress_line(progress: ProgressSnapshot) -> str:
    """``  12/100 done · 5 running · 2 failed · 3.4s``."""
    width = len(str(progress.total))
    return (
        f"  {progress.done:>{width}}/{progress.total} done · {progress.running} running"
        f" · {progress.failed} failed · {progress.elapsed_s:.1f}s"
    )


def _value(status: object) -> str:
    return str(getattr(status, "value", status))


def status_counts(results: Sequence[ExecutionResult]) -> dict[str, int]:
    """Tasks per status, every status present (zero when none), in lifecycle order."""
    counts = Counter(_value(result.status) for result in results)
    return {status: counts.get(status, 0) for status in STATUSES}


def summary_line(results: Sequence[ExecutionResult], elapsed_s: float | None = None) -> str:
    """``5 tasks: 4 succeeded, 1 failed in 2.1 s`` (statuses with no task are left out)."""
    counts = status_counts(results)
    parts = [
        f"{counts[status]} {_SUMMARY_WORDS.get(status, status)}"
        for status in _SUMMARY_ORDER
        if counts[status]
    ]
    noun = "task" if len(results) == 1 else "tasks"
    line = f"{len(results)} {noun}: {', '.join(parts) or 'none'}"
    if elapsed_s is None:
        elapsed_s = _span_s(results)
    return line if elapsed_s is None else f"{line} in {elapsed_s:.1f} s"


def _span_s(results: Sequence[ExecutionResult]) -> float | None:
    """Wall time from the first start to the last finish, when the results carry both."""
    starts = [r.started_at for r in results if r.started_at is not None]
    ends = [r.finished_at for r in results if r.finished_at is not None]
    if not starts or not ends:
        return None
    return max(0.0, (max(ends) - min(starts)).total_seconds())


def format_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.2f} s"


def _clean(text: str) -> str:
    """One line of printable text: an agent's output must not move the cursor or recolour the terminal."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def excerpt(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    line = _clean(text)
    if len(line) <= width:
        return line
    return line[: max(0, width - 1)] + "…"


def _tokens(result: ExecutionResult) -> str:
    usage = result.usage
    if not usage.input_tokens and not usage.output_tokens:
        return "-"
    return f"{usage.input_tokens}+{usage.output_tokens}"


def results_table(
    results: Sequence[ExecutionResult], *, width: int = 100, elapsed_s: float | None = None
) -> str:
    """An aligned table, one row per result in the given order, then the summary line."""
    rows = [
        (
            excerpt(result.task_id, _MAX_TASK_WIDTH),
            _value(result.status),
            "-" if _value(result.status) in _UNFINISHED else format_duration(result.duration_s),
            _tokens(result),
            result.output if result.succeeded else (result.error or result.output),
        )
        for result in results
    ]
    widths = [max([len(_HEADERS[col])] + [len(row[col]) for row in rows]) for col in range(4)]
    excerpt_width = max(_MIN_EXCERPT_WIDTH, width - sum(widths) - 2 * len(widths))
    right = (False, False, True, True)

    def line(cells: Sequence[str]) -> str:
        fixed = [
            cell.rjust(widths[col]) if right[col] else cell.ljust(widths[col])
            for col, cell in enumerate(cells[:4])
        ]
        return "  ".join([*fixed, excerpt(cells[4], excerpt_width)]).rstrip()

    lines = [line(_HEADERS), *(line(row) for row in rows), "", summary_line(results, elapsed_s)]
    return "\n".join(lines)


def status_summary(batch_id: str, results: Sequence[ExecutionResult]) -> str:
    """``coditect status``: the batch, then the count of tasks in each status."""
    counts = status_counts(results)
    width = max(len(status) for status in STATUSES)
    number = len(str(len(results)))
    lines = [f"batch {batch_id}: {len(results)} task{'' if len(results) == 1 else 's'}"]
    lines += [f"  {status.ljust(width)}  {counts[status]:>{number}}" for status in STATUSES]
    return "\n".join(lines)


class LiveLine:
    """One line on a terminal, rewritten in place with ``\\r``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._width = 0

    def show(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
