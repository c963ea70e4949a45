"""Following a batch until it finishes: its results as they come, progress, deadlines, lost batches.

The waiter reads the batch's event stream (``XREAD BLOCK``: no polling per task), fetches the result
of each task whose final event arrives, and every ``PROGRESS_INTERVAL_S`` reads the batch's counters
for the progress callback. The counters decide when the batch has finished, so a waiter that fell
behind a capped stream still ends with every result (it reads the rest by state); only a
``batch.finished`` event that arrives with every result already in hand ends the wait at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from coditect.backoff import REDIS_DOWN, Outage
from coditect.client.batches import BatchStore, BatchSummary, read_results, result_keys
from coditect.client.events import READ_COUNT, EventsRead, end_stream_key, scan_events, stream_key
from coditect.client.progress import PROGRESS_INTERVAL_S, BatchProgress, ProgressCallback
from coditect.engine.registry import live_workers
from coditect.errors import CoditectError
from coditect.held import Command, Replies
from coditect.models import ExecutionResult

__all__ = ["BatchLost", "BatchWaiter", "DeadlineReached", "first_read_commands"]

WORKER_CHECK_S = 2.0
# Up to this many tasks, the waiter reads the results it still awaits with every read of events.
RESULTS_WITH_EVENTS_MAX = 64
# A reply that never comes (a connection dropped without an RST) ends after this, on top of a
# blocking read's own wait; redis-py drops that connection and the next call opens another.
REDIS_REPLY_TIMEOUT_S = 10.0


class BatchLost(CoditectError):
    """The batch's record is gone from Redis (it expired, or Redis lost its data)."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(
            f"batch {batch_id}: its record is gone from Redis (it expired, or Redis restarted without "
            "persistence and lost it)"
        )
        self.batch_id = batch_id


class DeadlineReached(CoditectError):
    """The caller's deadline passed before the batch finished."""


class BatchWaiter:
    """Follows one batch; ``results()`` yields each task's result once, as the task ends."""

    def __init__(
        self,
        store: BatchStore,
        batch_id: str,
        *,
        since: str = "0-0",
        on_progress: ProgressCallback | None = None,
        deadline: float | None = None,
        watch_workers: bool = False,
        task_ids: Sequence[str] = (),
        first_read: Replies | None = None,
    ) -> None:
        self.store = store
        self.batch_id = batch_id
        self.since = since
        self.on_progress = on_progress
        self.deadline = deadline
        self.watch_workers = watch_workers
        self.started = time.monotonic()
        self.summary: BatchSummary | None = None
        self._seen: set[str] = set()
        self._note = ""
        self._done = 0
        self._next_worker_check = 0.0
        # A small batch's results are read in the same round trip as its events (see _next_events).
        self._expected = list(task_ids) if len(task_ids) <= RESULTS_WITH_EVENTS_MAX else []
        # Its caller wants them all at once and no progress: it waits for the batch's end alone, not
        # woken by each task's start (the results that came meanwhile are read with every read).
        self._until_end = bool(self._expected) and on_progress is None
        self._stream = end_stream_key(batch_id) if self._until_end else stream_key(batch_id)
        # The replies to first_read_commands(batch_id, task_ids, ...), sent with the batch's submit.
        self._first_read = first_read if self._expected else None

    async def results(self) -> AsyncIterator[ExecutionResult]:
        last = self.since
        attach = self.since == "0-0"  # following a batch that may be under way: start by its state
        outage = Outage()
        # A batch this waiter has just submitted needs no read of its counters before the first
        # interval: its events say when it ends. Progress reports and attaching read them at once.
        eager = attach or self.on_progress is not None
        next_tick = 0.0 if eager else time.monotonic() + PROGRESS_INTERVAL_S
        finished = False
        while True:
            try:
                # Every round trip has a deadline: a connection that went silent is dropped (and a
                # new one opened) instead of waited on for ever.
                async with asyncio.timeout(PROGRESS_INTERVAL_S + REDIS_REPLY_TIMEOUT_S):
                    found = await self._settle() if attach else []
                    attach = False
                    done = False
                    if finished or time.monotonic() >= next_tick:
                        summary = await self._tick()
                        next_tick = time.monotonic() + PROGRESS_INTERVAL_S
                        done = summary.finished
                        if done and len(self._seen) < summary.done:
                            found += await self._settle()
                    if not done:
                        read, fresh = await self._next_events(last, next_tick)
                        found += fresh
                outage.over()
            except REDIS_DOWN as err:  # includes TimeoutError
                await outage.backoff(err)
                continue
            for result in found:
                yield result
            if done:
                return
            finished = False
            if read.last and not self._until_end:
                last = read.last
            if read.ended is not None:
                if self.on_progress is None and len(self._seen) >= read.ended:
                    return  # every result is in hand: no need to read the counters again
                finished = True
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise DeadlineReached(f"batch {self.batch_id}: deadline reached")

    async def _next_events(self, last: str, next_tick: float) -> tuple[EventsRead, list[ExecutionResult]]:
        """The events after ``last`` (waiting until the next tick at most), and the results of the
        tasks whose final event is among them."""
        block_s = max(0.001, next_tick - time.monotonic())
        if self.deadline is not None:
            block_s = min(block_s, max(0.001, self.deadline - time.monotonic()))
        block_ms = max(1, int(block_s * 1000))
        since = "0-0" if self._until_end else last
        xread = ("XREAD", "COUNT", READ_COUNT, "BLOCK", block_ms, "STREAMS", self._stream, since)
        watched = [task for task in self._expected if task not in self._seen]
        values: list[bytes | None] = []
        if self._first_read is not None:
            first, self._first_read = self._first_read, None
            try:
                reply, watched = await first.next(), self._expected
                values = await first.next()
            finally:
                await first.drop()  # nothing to do once both replies are read
        elif watched:
            # The results of the tasks still awaited, read right after the events in one round trip: a
            # result and its task's final event are written by one script call, so a final event read
            # here finds its result, and a one-task batch takes no read after the event.
            reply, values = await self.store.held.call(xread, ("MGET", *result_keys(self.batch_id, watched)))
        else:
            (reply,) = await self.store.held.call(xread)
        found: list[ExecutionResult] = []
        if any(value is not None for value in values):
            early = read_results(self.batch_id, watched, values)
            found += (result for task, result in early.items() if task not in self._seen)
            self._seen.update(early)
        read = scan_events(reply)
        fresh = [task for task in read.final_tasks if task not in self._seen]
        if fresh:
            late = await self.store.fetch_results(self.batch_id, fresh)
            self._seen.update(late)
            found += late.values()
        return read, found

    async def _tick(self) -> BatchSummary:
        summary = await self.store.summary(self.batch_id)
        if summary is None:
            raise BatchLost(self.batch_id)
        self.summary = summary
        moved = summary.finished or summary.done > self._done
        self._done = summary.done
        if moved:
            self._note = ""  # tasks ended since the last report: a worker is alive
        elif self.watch_workers and time.monotonic() >= self._next_worker_check:
            self._next_worker_check = time.monotonic() + WORKER_CHECK_S
            alive = await live_workers(self.store.redis, self.store.queue_name)
            self._note = "" if alive else f"no worker is alive on queue {self.store.queue_name}"
        self._report(summary)
        return summary

    def _report(self, summary: BatchSummary) -> None:
        if self.on_progress is None:
            return
        counts = summary.counts
        self.on_progress(
            BatchProgress(
                total=summary.total,
                succeeded=counts["success"],
                failed=counts["failed"],
                timeout=counts["timeout"],
                cancelled=counts["cancelled"],
                running=counts["running"],
                elapsed_s=time.monotonic() - self.started,
                note=self._note,
            )
        )

    async def _settle(self) -> list[ExecutionResult]:
        """Results of the tasks that ended but were not yielded yet (read by state, not by event),
        the states a chunk at a time: a batch of 100,000 is not read into memory at once."""
        results: list[ExecutionResult] = []
        async for ended in self.store.ended_task_ids(self.batch_id):
            fresh = [task for task in dict.fromkeys(ended) if task not in self._seen]
            found = await self.store.fetch_results(self.batch_id, fresh) if fresh else {}
            self._seen.update(found)
            results += found.values()
        return results


def first_read_commands(batch_id: str, task_ids: Sequence[str], block_s: float) -> tuple[Command, ...]:
    """The first read of a waiter that follows a batch it submits (``BatchWaiter(first_read=...)``),
    sent in the same write as the submit (``BatchStore.submit(then=...)``), which saves a round trip.
    Such a waiter waits for the batch's end alone (its end stream, from the start), then the results.
    """
    block_ms = max(1, int(block_s * 1000))
    return (
        ("XREAD", "COUNT", READ_COUNT, "BLOCK", block_ms, "STREAMS", end_stream_key(batch_id), "0-0"),
        ("MGET", *result_keys(batch_id, task_ids)),
    )
