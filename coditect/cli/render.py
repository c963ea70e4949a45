"""Terminal rendering for the CLI: the live progress line, the results table, the status summary.

Pure functions that return strings (the CLI decides where they go), and ``LiveLine``, which rewrites
one line of a terminal in place. Only the standard library is
imported at run time, so ``coditect --help`` stays fast.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from coditect.client.batches import BatchSummary
    from coditect.client.events import Event
    from coditect.engine.registry import WorkerInfo
    from coditect.models import ExecutionResult

__all__ = [
    "STATUSES",
    "LiveLine",
    "ProgressSnapshot",
    "batches_table",
    "event_line",
    "excerpt",
    "format_duration",
    "format_usd",
    "progress_line",
    "results_table",
    "status_counts",
    "status_summary",
    "summary_line",
    "totals_lines",
    "workers_table",
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
    """What ``progress_line`` reads; ``coditect.client.progress.BatchProgress`` has these fields."""

    @property
    def total(self) -> int: ...
    @property
    def done(self) -> int: ...
    @property
    def running(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def timeout(self) -> int: ...
    @property
    def cancelled(self) -> int: ...
    @property
    def elapsed_s(self) -> float: ...
    @property
    def note(self) -> str: ...


def progress_line(progress: ProgressSnapshot) -> str:
    """``  12/100 done · 5 running · 2 failed · 1 timeout · 3 cancelled · 3.4s`` (zero counts left out
    but for failed), and what is wrong, if anything (``· no worker is alive on queue ...``)."""
    width = len(str(progress.total))
    parts = [f"  {progress.done:>{width}}/{progress.total} done", f"{progress.running} running"]
    parts.append(f"{progress.failed} failed")
    if progress.timeout:
        parts.append(f"{progress.timeout} timeout")
    if progress.cancelled:
        parts.append(f"{progress.cancelled} cancelled")
    parts.append(f"{progress.elapsed_s:.1f}s")
    if progress.note:
        parts.append(progress.note)
    return " · ".join(parts)


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


def format_usd(value: float, digits: int = 3) -> str:
    """``$0.000399``, ``$0.0375``, ``$2.50``, ``$1,234.56``: at least ``digits`` significant digits, and
    cents (the same as ``coditect/lua/budget.lua`` writes in budget messages)."""
    places = 2
    if value > 0:
        places = max(2, digits - 1 - math.floor(math.log10(value)))
    return f"${value:,.{places}f}"


def status_summary(summary: BatchSummary) -> str:
    """``coditect status``: the batch, the count of tasks in each status, then its totals.

    A batch cancelled, timed out or stopped by its budget says why: ``finished (budget exhausted: ...)``,
    or ``stopping (...)`` while its running tasks end.
    """
    width = max(len(status) for status in STATUSES)
    number = len(str(summary.total))
    state = "finished" if summary.finished else "stopping" if summary.cancelled else "running"
    if summary.cancelled:
        state += f" ({_clean(summary.cancelled)})"
    name = f" ({summary.name})" if summary.name else ""
    lines = [f"batch {summary.id}{name}: {summary.total} task{'' if summary.total == 1 else 's'}, {state}"]
    lines += [f"  {status.ljust(width)}  {summary.counts.get(status, 0):>{number}}" for status in STATUSES]
    return "\n".join([*lines, *totals_lines(summary)])


def totals_lines(summary: BatchSummary) -> list[str]:
    """Tokens and cost of a batch, then per model and per agent."""
    totals = summary.totals

    def tokens(values: dict[str, float]) -> str:
        text = f"{int(values.get('in', 0))} in + {int(values.get('out', 0))} out"
        if values.get("cache_read") or values.get("cache_write"):
            read, written = int(values.get("cache_read", 0)), int(values.get("cache_write", 0))
            text += f" ({read} cache read, {written} written)"
        return text

    def cost(values: dict[str, float]) -> str:
        unpriced = int(values.get("unpriced", 0))
        text = format_usd(values.get("cost", 0.0))
        return text + (f" (+{unpriced} task(s) of unknown price)" if unpriced else "")

    lines = [f"tokens: {tokens(totals)}; cost {cost(totals)}"]
    for kind, groups in (("model", summary.by_model), ("agent", summary.by_agent)):
        for name in sorted(groups):
            lines.append(f"  {kind} {name}: {tokens(groups[name])}; {cost(groups[name])}")
    return lines


def event_line(event: Event) -> str:
    """``13:12:01.120  task.succeeded  b-1/t1  try 1  host:42  0.52 s  34+13 tokens  $0.0001``."""
    where = event.batch_id + (f"/{event.task_id}" if event.task_id else "")
    parts = [event.at.strftime("%H:%M:%S.%f")[:-3], event.type.ljust(14), where]
    if event.attempt:
        parts.append(f"try {event.attempt}")
    if event.worker:
        parts.append(event.worker)
    data = event.data
    if data.get("duration") is not None:
        parts.append(format_duration(float(data["duration"])))
    if "in" in data:
        parts.append(f"{data['in']}+{data.get('out', 0)} tokens")
    if data.get("cost") is not None and event.type != "batch.finished":
        parts.append(format_usd(float(data["cost"])))
    if event.type == "batch.finished":
        counts = ", ".join(
            f"{data[k]} {k}" for k in ("success", "failed", "timeout", "cancelled") if data.get(k)
        )
        parts.append(counts or "no tasks")
        parts.append(format_usd(float(data.get("cost") or 0)))
    if data.get("error"):
        parts.append(excerpt(str(data["error"]), 120))
    return "  ".join(parts)


def batches_table(summaries: Sequence[BatchSummary]) -> str:
    """``coditect batches``: one row per batch, newest first."""
    if not summaries:
        return "no batches"
    rows = []
    for summary in summaries:
        counts = ", ".join(f"{n} {status}" for status, n in summary.counts.items() if n)
        created = summary.created_at.strftime("%Y-%m-%d %H:%M:%S") if summary.created_at else "-"
        duration = format_duration(summary.duration_s) if summary.duration_s is not None else "running"
        tokens = int(sum(summary.totals.get(k, 0) for k in ("in", "out", "cache_read", "cache_write")))
        rows.append((summary.id, excerpt(summary.name, 24), created, duration, counts or "-", str(tokens),
                     format_usd(summary.totals.get("cost", 0.0))))  # fmt: skip
    headers = ("BATCH", "NAME", "CREATED (UTC)", "DURATION", "TASKS", "TOKENS", "COST")
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in (headers, *rows)]  # fmt: skip
    return "\n".join(lines)


def workers_table(workers: Sequence[WorkerInfo]) -> str:
    """``coditect worker --check``: the live workers."""
    lines = [f"{len(workers)} worker(s) alive"]
    for worker in workers:
        lines.append(
            f"  {worker.name}  queue {worker.queue}  {worker.in_flight}/{worker.max_jobs} in flight  "
            f"{worker.complete} done, {worker.failed} failed, {worker.retried} retried"
        )
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
