"""A batch as one row of the batches page, and as the header of its own page: the same fields, formatted
once, for the template and for the live stream's JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from coditect.client.batches import BatchSummary
from coditect.web.formatting import duration, moment, money, tokens

__all__ = ["COUNTED", "BatchRow", "batch_row"]

# The statuses a row shows a count of, in this order.
COUNTED = ("success", "failed", "timeout", "cancelled", "running", "queued")


@dataclass(frozen=True, slots=True)
class BatchRow:
    id: str
    name: str
    created: str
    state: str
    done: int
    total: int
    counts: dict[str, int]
    duration: str
    tokens: str
    cost: str
    rerun_of: str
    finished: bool
    rerunnable: bool

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


def _state(summary: BatchSummary) -> str:
    if summary.finished:
        return "cancelled" if summary.cancelled else "finished"
    return "cancelling" if summary.cancelled else "running"


def batch_row(summary: BatchSummary) -> BatchRow:
    counts = {status: summary.counts.get(status, 0) for status in COUNTED}
    totals = summary.totals
    all_tokens = sum(totals.get(kind, 0.0) for kind in ("in", "out", "cache_read", "cache_write"))
    unpriced = int(totals.get("unpriced", 0))
    cost = money(totals.get("cost", 0.0))
    if unpriced:  # tasks whose model has no known price
        cost = (
            "no price"
            if unpriced >= summary.done and not totals.get("cost")
            else f"{cost} + {unpriced} unpriced"
        )
    return BatchRow(
        id=summary.id,
        name=summary.name,
        created=moment(summary.created_at),
        state=_state(summary),
        done=summary.done,
        total=summary.total,
        counts=counts,
        duration=duration(summary.duration_s),
        tokens=tokens(all_tokens),
        cost=cost,
        rerun_of=summary.fields.get("rerun_of", ""),
        finished=summary.finished,
        rerunnable=summary.finished and summary.done > summary.counts.get("success", 0),
    )
