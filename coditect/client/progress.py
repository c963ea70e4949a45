"""Progress of a running batch: snapshots for a callback, reported at most every 0.2 s."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from coditect.models import ExecutionResult

__all__ = ["BatchProgress", "ProgressCallback", "ProgressTracker"]

PROGRESS_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """A snapshot of a batch while it runs."""

    total: int
    done: int
    running: int
    failed: int
    elapsed_s: float

    @property
    def queued(self) -> int:
        return self.total - self.done - self.running


ProgressCallback = Callable[[BatchProgress], None]


class ProgressTracker:
    """Counts finished tasks and reports progress at most every ``PROGRESS_INTERVAL_S``."""

    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total, self.callback = total, callback
        self.done = self.failed = 0
        self.started = time.monotonic()
        self._last = 0.0

    def finished(self, result: ExecutionResult) -> None:
        self.done += 1
        self.failed += 0 if result.succeeded else 1

    def due(self) -> bool:
        return self.callback is not None and time.monotonic() - self._last >= PROGRESS_INTERVAL_S

    def report(self, running: int) -> None:
        if self.callback is not None:
            self._last = time.monotonic()
            self.callback(
                BatchProgress(self.total, self.done, running, self.failed, self._last - self.started)
            )
