"""Delegation on the workers: a parent's children become tasks of its batch, and the parent waits for
their results without holding its worker slot.

The children are added (and enqueued) by one script call; a child that exists already is left as it
is, so a parent that runs again after its worker died finds the children it delegated the first
time, finished or in flight, instead of starting them again. When a child ends, the finish script
tells the worker that holds the parent (a message on that worker's channel); the parent also looks
every ``CHILD_CHECK_S``, so a lost message costs at most that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from coditect.backoff import REDIS_DOWN, Outage
from coditect.clock import now_ms
from coditect.keys import RESULT_PREFIX, job_id_for, wake_channel
from coditect.models import AgentTask, ExecutionResult
from coditect.results import result_from_arq

if TYPE_CHECKING:
    from coditect.engine.context import JobRun
    from coditect.engine.worker import CoditectWorker

__all__ = ["CHILD_CHECK_S", "BatchDelegator"]

CHILD_CHECK_S = 1.0


class BatchDelegator:
    """Delegates a batch task's children through Redis (``coditect.execution.context.Delegator``)."""

    def __init__(self, worker: CoditectWorker, run: JobRun) -> None:
        assert run.batch_id is not None
        self.worker = worker
        self.run = run

    async def delegate(
        self, parent: AgentTask, children: Sequence[AgentTask], depth: int
    ) -> list[ExecutionResult]:
        worker, batch_id = self.worker, self.run.batch_id
        assert batch_id is not None
        args: list[str | int] = [
            now_ms(), wake_channel(worker.queue_name), worker.events_max_len, int(worker.batch_keep_s * 1000),
            worker.expires_extra_ms, worker.worker_name, batch_id, parent.id, depth,
        ]  # fmt: skip
        for child in children:
            args += [child.id, child.model_dump_json()]
        outage = Outage()
        while True:
            try:
                await worker.registered_script("delegate")(keys=[worker.queue_name], args=args)  # idempotent
                break
            except REDIS_DOWN as err:
                await outage.backoff(err)
        return await self._results([job_id_for(batch_id, child.id) for child in children])

    async def _results(self, job_ids: list[str]) -> list[ExecutionResult]:
        found: dict[str, ExecutionResult] = {}
        outage = Outage()
        while len(found) < len(job_ids):
            pending = [job_id for job_id in job_ids if job_id not in found]
            # Watch before reading, so a child that ends in between still wakes this parent.
            waiters = [self.worker.watch_child(job_id) for job_id in pending]
            try:
                raw = await self.worker.pool.mget([RESULT_PREFIX + job_id for job_id in pending])
            except REDIS_DOWN as err:
                for waiter in waiters:
                    waiter.cancel()
                await outage.backoff(err)
                continue
            outage.over()
            for job_id, value in zip(pending, raw, strict=True):
                if value is not None:
                    found[job_id] = result_from_arq(value, job_id)
            if len(found) < len(job_ids):
                async with self.run.idle():
                    await asyncio.wait(waiters, timeout=CHILD_CHECK_S, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        return [found[job_id] for job_id in job_ids]
