"""ProjectOrchestrator: enqueue batches of tasks and await their results, in input order."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from arq.connections import ArqRedis

from coditect.agents import AgentRegistry
from coditect.backoff import REDIS_DOWN, Outage, outlasting_outages
from coditect.client.batches import CHUNK, BatchRecord, BatchStore, job_id_for
from coditect.client.graph import check_batch, dependency_waves
from coditect.client.progress import BatchProgress, ProgressCallback, ProgressTracker
from coditect.connections import create_redis_pool
from coditect.engine.embedded import EmbeddedBackend
from coditect.errors import TaskInputError
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.settings import Settings

__all__ = ["BatchProgress", "ProjectOrchestrator", "check_batch", "dependency_waves"]

logger = logging.getLogger(__name__)

FULL_CHECK_INTERVAL_S = 1.0
BATCH_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A reply that never comes (a connection dropped without an RST) ends after this; redis-py closes
# the connection it was awaited on, and the next call opens a new one.
REDIS_REPLY_TIMEOUT_S = 10.0


def new_batch_id() -> str:
    return f"b-{uuid.uuid4().hex[:12]}"


class ProjectOrchestrator:
    """Runs tasks on ARQ workers and gathers their results.

    ``async with ProjectOrchestrator() as orch: await orch.execute_tasks_parallel(tasks)``

    With no Redis URL (argument or ``CODITECT_REDIS_URL``) it starts the embedded backend: an
    in-process Redis and workers on this loop. With one, it enqueues for the worker processes
    already running and awaits their results.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_url: str | None = None,
        agents: AgentRegistry | None = None,
    ) -> None:
        settings = settings or Settings()
        if redis_url is not None:
            settings = settings.model_copy(update={"redis_url": redis_url})
        self.settings = settings
        self.agents = agents or AgentRegistry.from_settings(settings)
        self._tasks: dict[str, AgentTask] = {}
        self._embedded: EmbeddedBackend | None = None
        self._redis: ArqRedis | None = None
        self._store: BatchStore | None = None

    async def __aenter__(self) -> ProjectOrchestrator:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def open(self) -> None:
        if self._store is not None:
            raise RuntimeError("this orchestrator is already open")
        if self.settings.embedded:
            self._embedded = EmbeddedBackend(self.settings)
            await self._embedded.start()
            self._redis = self._embedded.pool()
        else:
            self._redis = await create_redis_pool(self.settings, conn_retries=1)
        self._store = BatchStore(
            self._redis, queue_name=self.settings.queue_name, keep_result_s=self.settings.keep_result_s
        )

    async def close(self) -> None:
        self._store = None
        if self._embedded is not None:
            await self._embedded.stop()
            self._embedded = None
        if self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)
            self._redis = None

    @property
    def store(self) -> BatchStore:
        if self._store is None:
            raise RuntimeError("open the orchestrator first: async with ProjectOrchestrator() as orch: ...")
        return self._store

    @property
    def redis(self) -> ArqRedis:
        if self._redis is None:
            raise RuntimeError("open the orchestrator first")
        return self._redis

    async def add_tasks(self, tasks: Iterable[AgentTask]) -> None:
        """Register tasks so that ``execute_task(task_id)`` and ``execute_tasks_parallel(ids)`` find them."""
        for task in tasks:
            self._check_agent(task)
            self._tasks[task.id] = task

    async def execute_task(self, task_id: str, agent: str | None = None) -> ExecutionResult:
        """Run one registered task and return its result."""
        task = self._lookup(task_id)
        if agent is not None:
            task = task.model_copy(update={"agent": agent})
        return await self._execute_task_internal(task)

    async def _execute_task_internal(self, task: AgentTask) -> ExecutionResult:
        (result,) = await self.run_batch([task])
        return result

    async def execute_tasks_parallel(
        self,
        task_ids: Sequence[str | AgentTask],
        *,
        batch_id: str | None = None,
        name: str = "",
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[ExecutionResult]:
        """Run tasks (registered ids, or tasks) on the workers in parallel; results in input order."""
        tasks = [item if isinstance(item, AgentTask) else self._lookup(item) for item in task_ids]
        return await self.run_batch(
            tasks, batch_id=batch_id, name=name, timeout_s=timeout_s, on_progress=on_progress
        )

    async def run_batch(
        self,
        tasks: Sequence[AgentTask],
        *,
        batch_id: str | None = None,
        name: str = "",
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[ExecutionResult]:
        """Submit a batch and wait for it. Tasks run in dependency waves (``depends_on``)."""
        record = self._new_record(tasks, batch_id, name)
        return await self._run_waves(record, tasks, timeout_s, on_progress)

    async def submit(self, tasks: Sequence[AgentTask], *, batch_id: str | None = None, name: str = "") -> str:
        """Record a batch and enqueue it; returns the batch id. Nothing is enqueued if any task is invalid."""
        record = self._new_record(tasks, batch_id, name)
        if any(task.depends_on for task in tasks):
            raise TaskInputError(
                "tasks with depends_on run only while the submitter waits; use 'coditect run' or run_batch",
                field="depends_on",
            )
        added = await self.store.enqueue(record.id, tasks, record=record)
        logger.info("batch %s: %d task(s) enqueued, %d already there", record.id, added, len(tasks) - added)
        return record.id

    def _new_record(self, tasks: Sequence[AgentTask], batch_id: str | None, name: str) -> BatchRecord:
        check_batch(tasks, self.agents)
        batch_id = batch_id or new_batch_id()
        if not BATCH_ID_PATTERN.match(batch_id):
            raise TaskInputError(
                f"{batch_id!r} is not a batch id: use 1-64 letters, digits, '_', '.' or '-'", field="batch_id"
            )
        return BatchRecord(id=batch_id, name=name, task_ids=[task.id for task in tasks])

    async def _run_waves(
        self,
        record: BatchRecord,
        tasks: Sequence[AgentTask],
        timeout_s: float | None,
        on_progress: ProgressCallback | None,
    ) -> list[ExecutionResult]:
        batch_id = record.id
        unsaved: BatchRecord | None = record
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        results: dict[str, ExecutionResult] = {}
        tracker = ProgressTracker(len(tasks), on_progress)
        for wave in dependency_waves(tasks):
            runnable: list[tuple[AgentTask, list[str]]] = []
            skipped: list[tuple[AgentTask, list[str]]] = []
            for task in wave:
                failed_deps = [dep for dep in task.depends_on if not results[dep].succeeded]
                (skipped if failed_deps else runnable).append((task, failed_deps))
            for task, failed_deps in skipped:
                results[task.id] = ExecutionResult(
                    task_id=task.id,
                    status=ExecutionStatus.CANCELLED,
                    agent=task.agent,
                    attempts=0,
                    error=f"not run: dependency {', '.join(failed_deps)} did not succeed",
                )
                tracker.finished(results[task.id])
            wave_tasks = [task for task, _ in runnable]
            enqueue = functools.partial(self.store.enqueue, batch_id, wave_tasks, record=unsaved)
            # Idempotent, so safe to send again; ten seconds per chunk of jobs before giving up on a reply.
            timeout_s = REDIS_REPLY_TIMEOUT_S * (1 + len(wave_tasks) // CHUNK)
            added = await outlasting_outages(enqueue, timeout_s)
            unsaved = None
            results.update(
                await self.wait(
                    batch_id,
                    [task.id for task in wave_tasks],
                    deadline=deadline,
                    resubmit=wave_tasks,
                    fresh=added == len(wave_tasks),
                    _tracker=tracker,
                )
            )
        return [results[task.id] for task in tasks]

    async def wait(
        self,
        batch_id: str,
        task_ids: Sequence[str],
        *,
        deadline: float | None = None,
        on_progress: ProgressCallback | None = None,
        resubmit: Sequence[AgentTask] = (),
        fresh: bool = False,
        _tracker: ProgressTracker | None = None,
    ) -> dict[str, ExecutionResult]:
        """Await the tasks' results: block on the batch's done list, with a full check every second.

        When the batch stalls (nothing finished since the last full check) or its record is gone from
        Redis, the full check also looks for jobs that Redis lost (restarted without persistence) and
        enqueues those of ``resubmit`` again. ``fresh`` says every task was just enqueued, so none can have
        finished yet and the first full check can wait. ``deadline`` is a ``time.monotonic()`` value.
        """
        tracker = _tracker or ProgressTracker(len(task_ids), on_progress)
        pending = {job_id_for(batch_id, task_id): task_id for task_id in task_ids}
        by_job_id = {job_id_for(batch_id, task.id): task for task in resubmit}
        results: dict[str, ExecutionResult] = {}
        next_scan = time.monotonic() + FULL_CHECK_INTERVAL_S if fresh else 0.0
        finished_since_check = 0
        outage = Outage()
        while pending:
            try:
                async with asyncio.timeout(FULL_CHECK_INTERVAL_S + REDIS_REPLY_TIMEOUT_S):
                    now = time.monotonic()
                    if now >= next_scan:
                        found = await self.store.fetch_results(list(pending))
                        if by_job_id and (not finished_since_check or not await self.store.exists(batch_id)):
                            unfinished = [job_id for job_id in pending if job_id not in found]
                            await self._resubmit_lost(batch_id, unfinished, by_job_id)
                        next_scan = now + FULL_CHECK_INTERVAL_S
                        finished_since_check = 0
                    else:
                        wait_s = next_scan - now if deadline is None else min(next_scan, deadline) - now
                        reported = await self.store.wait_done(batch_id, wait_s, expected=len(pending))
                        done = [job_id for job_id in reported if job_id in pending]
                        found = await self.store.fetch_results(done) if done else {}
                        finished_since_check += len(found)
                    for job_id, result in found.items():
                        results[pending.pop(job_id)] = result
                        tracker.finished(result)
                    if not pending:
                        break
                    if tracker.due():
                        tracker.report(await self.store.count_running(list(pending)))
                    if deadline is not None and time.monotonic() >= deadline:
                        await self._expire(batch_id, pending, results, by_job_id)
            except REDIS_DOWN as err:
                # Every step is a read or an idempotent write; the full check finds what a lost
                # reply (e.g. a popped done list) hid.
                await outage.backoff(err)
                next_scan = 0.0
            else:
                outage.over()
        tracker.report(0)
        return results

    async def _resubmit_lost(self, batch_id: str, unfinished: list[str], tasks: dict[str, AgentTask]) -> None:
        if not unfinished:
            return
        lost = [tasks[job_id] for job_id in await self.store.missing(unfinished) if job_id in tasks]
        if lost:
            added = await self.store.enqueue(batch_id, lost)
            if added:
                logger.warning("batch %s: %d job(s) were lost by Redis; enqueued again", batch_id, added)

    async def _expire(
        self,
        batch_id: str,
        pending: dict[str, str],
        results: dict[str, ExecutionResult],
        tasks: dict[str, AgentTask],
    ) -> None:
        await self.store.cancel(list(pending), "batch timed out")
        for job_id, task_id in pending.items():
            task = tasks.get(job_id)
            results[task_id] = ExecutionResult(
                task_id=task_id,
                agent=task.agent if task is not None else "",
                status=ExecutionStatus.TIMEOUT,
                attempts=0,
                error=f"batch {batch_id} timed out before this task finished; it was cancelled",
            )
        pending.clear()

    async def results(self, batch_id: str) -> list[ExecutionResult]:
        """Every task of a recorded batch: its result, or its current status."""
        record = await self._record(batch_id)
        job_ids = [job_id_for(batch_id, task_id) for task_id in record.task_ids]
        found = await self.store.fetch_results(job_ids)
        unfinished = [job_id for job_id in job_ids if job_id not in found]
        states = dict(zip(unfinished, await self.store.states(unfinished), strict=True)) if unfinished else {}
        return [
            found.get(job_id) or ExecutionResult(task_id=task_id, status=states[job_id], attempts=0)
            for job_id, task_id in zip(job_ids, record.task_ids, strict=True)
        ]

    async def cancel(self, batch_id: str) -> tuple[int, int]:
        """Cancel a recorded batch: queued tasks never start, running ones are aborted."""
        record = await self._record(batch_id)
        return await self.store.cancel(
            [job_id_for(batch_id, t) for t in record.task_ids], "cancelled by user"
        )

    async def _record(self, batch_id: str) -> BatchRecord:
        record = await self.store.load(batch_id)
        if record is None:
            raise TaskInputError(
                f"no batch {batch_id!r} (unknown, or its results have expired)", field="batch"
            )
        return record

    def _lookup(self, task_id: str) -> AgentTask:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskInputError(
                f"unknown task {task_id!r}; add it with add_tasks() first", field="id"
            ) from None

    def _check_agent(self, task: AgentTask) -> None:
        if task.agent not in self.agents:
            known = ", ".join(self.agents.names)
            raise TaskInputError(
                f"unknown agent {task.agent!r}; known agents: {known}", field=f"{task.id}.agent"
            )
