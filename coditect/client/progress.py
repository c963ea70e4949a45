"""Progress of a running batch: snapshots for a callback, taken from the batch's counters in Redis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PROGRESS_INTERVAL_S", "BatchProgress", "ProgressCallback"]

PROGRESS_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """A snapshot of a batch while it runs. ``note`` says what is wrong, if anything (no live worker)."""

    total: int
    succeeded: int
    failed: int
    timeout: int
    cancelled: int
    running: int
    elapsed_s: float
    note: str = ""

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.timeout + self.cancelled

    @property
    def queued(self) -> int:
        return max(0, self.total - self.done - self.running)


ProgressCallback = Callable[[BatchProgress], None]
