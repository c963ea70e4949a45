"""ProjectOrchestrator: submit batches of tasks, follow them, and read their results.

A batch's graph, state and progress live in Redis and the workers drive it, so nobody has to wait:
``submit`` and leave, or ``run_batch`` to submit and wait. Any process can follow a batch
(``wait``, ``as_completed``, ``events``), read it (``results``, ``summary``) or ``cancel`` it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from arq.connections import ArqRedis

from coditect.agents import AgentRegistry
from coditect.backoff import outlasting_outages
from coditect.client.batches import BatchStore, BatchSummary, Submitted
from coditect.client.events import Event, follow_events, read_events
from coditect.client.graph import check_batch, dependency_order, dependency_waves
from coditect.client.memory import MEMORY_CHECK_MIN_BYTES, check_room, estimated_bytes
from coditect.client.progress import PROGRESS_INTERVAL_S, BatchProgress, ProgressCallback
from coditect.client.waiter import (
    RESULTS_WITH_EVENTS_MAX,
    BatchLost,
    BatchWaiter,
    DeadlineReached,
    first_read_commands,
)
from coditect.connections import create_redis_pool, redact_url
from coditect.errors import TaskInputError
from coditect.gc_tuning import SETTLE_EVERY, frozen_while_running, settle
from coditect.held import Command, Replies
from coditect.models import AgentTask, Budget, ExecutionResult, ExecutionStatus
from coditect.redis_config import PolicyCheck, read_server_info
from coditect.redis_errors import refusals
from coditect.settings import Settings

__all__ = ["BatchLost", "BatchProgress", "DeadlineReached", "ProjectOrchestrator", "check_batch"]

logger = logging.getLogger(__name__)

BATCH_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A reply that never comes (a connection dropped without an RST) ends after this; redis-py closes
# the connection it was awaited on, and the next call opens a new one.
REDIS_REPLY_TIMEOUT_S = 10.0
# After a deadline, how long the running tasks have to record that they were stopped.
ABORT_GRACE_S = 10.0


def new_batch_id() -> str:
    return f"b-{uuid.uuid4().hex[:12]}"


class ProjectOrchestrator:
    """Runs tasks on ARQ workers and gathers their results.

    ``async with ProjectOrchestrator() as orch: await orch.execute_tasks_parallel(tasks)``

    With no Redis URL (argument or ``CODITECT_REDIS_URL``) it starts the embedded backend: an
    in-process Redis and workers on this loop, which use ``agents``. With one, it works with the
    worker processes already running on that Redis.
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
        self._embedded: Any = None
        self._redis: ArqRedis | None = None
        self._store: BatchStore | None = None
        self._policy = PolicyCheck("orchestrator")
        self._info_refused = False
        self._url_of: Settings | None = None
        self._redacted_url = ""

    async def __aenter__(self) -> ProjectOrchestrator:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def open(self) -> None:
        if self._store is not None:
            raise RuntimeError("this orchestrator is already open")
        if self.settings.embedded:
            from coditect.engine.embedded import EmbeddedBackend

            embedded = EmbeddedBackend(self.settings, agents=self.agents)
            await embedded.start()  # raises if its workers cannot start: nothing would run
            self._embedded = embedded
            self._redis = embedded.pool()
        else:
            self._redis = await create_redis_pool(self.settings, conn_retries=1)
        self._store = BatchStore(
            self._redis,
            queue_name=self.settings.queue_name,
            keep_result_s=self.settings.keep_result_s,
            events_max_len=self.settings.events_max_len,
        )

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
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

    # -- ADR-001's API ------------------------------------------------------------------------

    async def add_tasks(self, tasks: Iterable[AgentTask]) -> None:
        """Register tasks so that ``execute_task(task_id)`` and ``execute_tasks_parallel(ids)`` find them."""
        for task in tasks:
            if task.agent not in self.agents:
                known = ", ".join(self.agents.names)
                raise TaskInputError(
                    f"unknown agent {task.agent!r}; known agents: {known}", field=f"{task.id}.agent"
                )
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

    # -- batches ------------------------------------------------------------------------------

    async def submit(
        self,
        tasks: Sequence[AgentTask],
        *,
        batch_id: str | None = None,
        name: str = "",
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
    ) -> str:
        """Record a batch in Redis and enqueue what can start; returns the batch id.

        Nothing is enqueued if any task is invalid (repeated ids, unknown agents or dependencies,
        cycles). Submitting a batch id that exists already adds nothing and returns its id.
        """
        budget = Budget(budget_usd=budget_usd, budget_tokens=budget_tokens)
        return (await self._submit(tasks, batch_id, name, budget)).batch_id

    async def _submit(
        self,
        tasks: Sequence[AgentTask],
        batch_id: str | None,
        name: str,
        budget: Budget,
        then: Sequence[Command] = (),
    ) -> Submitted:
        # Scripts are checked where they run: here, for the embedded workers; workers elsewhere have
        # their own scripts folder, and a missing script fails its task there.
        local = self.settings if self.settings.embedded else None
        ordered = dependency_order(check_batch(tasks, self.agents, settings=local))
        batch_id = batch_id or new_batch_id()
        if not BATCH_ID_PATTERN.match(batch_id):
            raise TaskInputError(
                f"{batch_id!r} is not a batch id: use 1-64 letters, digits, '_', '.' or '-'", field="batch_id"
            )
        with refusals(self._url, doing=f"batch {batch_id} was not enqueued"):
            await self._check_room(batch_id, ordered)
            submitted = await outlasting_outages(
                lambda: self.store.submit(
                    batch_id, ordered, fields={"name": name, **budget.fields()}, then=then
                ),
                REDIS_REPLY_TIMEOUT_S * (1 + len(tasks) // 500),
            )
        if submitted.created:
            logger.info("batch %s: %d task(s) submitted", batch_id, len(tasks))
        return submitted

    async def _check_room(self, batch_id: str, tasks: Sequence[AgentTask]) -> None:
        """Refuse a batch that does not fit in Redis's memory (``check_room``); say once what is wrong
        with the eviction policy. INFO is read at the first submit, then for big batches only."""
        if self.settings.embedded or self._info_refused:
            return
        need = estimated_bytes(tasks)
        if self._policy.done and need < MEMORY_CHECK_MIN_BYTES:
            return
        info = await outlasting_outages(lambda: read_server_info(self.redis, "memory"), REDIS_REPLY_TIMEOUT_S)
        self._policy.check(info)
        self._info_refused = info is None  # the ACL will not change its mind for this orchestrator
        if info is not None:
            check_room(batch_id, need, info)

    @property
    def _url(self) -> str:
        """The Redis URL for messages, without its password (worked out once per settings object)."""
        if self._url_of is not self.settings:
            self._url_of = self.settings
            self._redacted_url = "" if self.settings.embedded else redact_url(self.settings.redis_url)
        return self._redacted_url

    async def run_batch(
        self,
        tasks: Sequence[AgentTask],
        *,
        batch_id: str | None = None,
        name: str = "",
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
    ) -> list[ExecutionResult]:
        """Submit a batch and wait for every result (input order). Dependants start as soon as their
        dependencies succeed; ``timeout_s`` ends the unfinished tasks with status ``timeout``. With a
        budget, tasks that would start once it is spent end ``cancelled`` ("budget exhausted")."""
        with refusals(self._url), frozen_while_running(len(tasks)):
            budget = Budget(budget_usd=budget_usd, budget_tokens=budget_tokens)
            batch_id = batch_id or new_batch_id()
            then = self._first_read(batch_id, tasks, timeout_s) if on_progress is None else ()
            submitted = await self._submit(tasks, batch_id, name, budget, then)
            try:
                if not submitted.created:  # the batch exists: follow it, if it is this batch
                    recorded = set(await self.store.task_ids(submitted.batch_id))
                    extra = [task.id for task in tasks if task.id not in recorded]
                    if extra:
                        raise TaskInputError(
                            f"batch {submitted.batch_id!r} exists with other tasks (it has no {extra[0]!r}); "
                            "choose another batch id",
                            field="batch_id",
                        )
                since = submitted.last_event_id if submitted.created else "0-0"
                deadline = None if timeout_s is None else time.monotonic() + timeout_s
                found = await self._gather(
                    submitted.batch_id, tasks, since, deadline, on_progress, submitted.then_replies
                )
            finally:
                if submitted.then_replies is not None:
                    await submitted.then_replies.drop()
            return [found[task.id] for task in tasks]

    def _first_read(
        self, batch_id: str, tasks: Sequence[AgentTask], timeout_s: float | None
    ) -> tuple[Command, ...]:
        """The waiter's first read, to send with a small batch's submit (``first_read_commands``).
        Not in the embedded mode, whose Redis runs commands as its own loop turns come."""
        if self.settings.embedded or not 0 < len(tasks) <= RESULTS_WITH_EVENTS_MAX:
            return ()
        block_s = PROGRESS_INTERVAL_S if timeout_s is None else min(PROGRESS_INTERVAL_S, timeout_s)
        return first_read_commands(batch_id, [task.id for task in tasks], block_s)

    async def _gather(
        self,
        batch_id: str,
        tasks: Sequence[AgentTask],
        since: str,
        deadline: float | None,
        on_progress: ProgressCallback | None,
        first_read: Replies | None,
    ) -> dict[str, ExecutionResult]:
        found: dict[str, ExecutionResult] = {}
        expired = False
        awaited = [task.id for task in tasks] if len(tasks) <= RESULTS_WITH_EVENTS_MAX else []
        while True:
            waiter = BatchWaiter(
                self.store, batch_id, since=since, on_progress=on_progress, deadline=deadline,
                watch_workers=not self.settings.embedded, task_ids=awaited, first_read=first_read,
            )  # fmt: skip
            first_read = None
            try:
                async for result in waiter.results():
                    found[result.task_id] = result
                    if len(found) % SETTLE_EVERY == 0:
                        settle()
                return found
            except DeadlineReached:
                if expired:  # a running task's worker never recorded its abort (it died): say so here
                    for task in tasks:
                        if task.id not in found:
                            found[task.id] = ExecutionResult(
                                task_id=task.id, status=ExecutionStatus.TIMEOUT, agent=task.agent, attempts=0,
                                error=f"batch {batch_id} timed out; its worker did not confirm the abort",
                            )  # fmt: skip
                    return found
                await self._expire(batch_id)
                expired = True
                deadline, since = time.monotonic() + ABORT_GRACE_S, "0-0"
            except BatchLost:
                # Redis lost its data: enqueue again what has not finished (the batch is ours).
                lost = [task for task in tasks if task.id not in found]
                logger.warning(
                    "batch %s: lost by Redis; %d unfinished task(s) enqueued again", batch_id, len(lost)
                )
                await self._recreate(batch_id, lost)
                since = "0-0"

    async def _expire(self, batch_id: str) -> None:
        reason = f"batch {batch_id} timed out before this task finished"
        await outlasting_outages(
            lambda: self.store.cancel(batch_id, reason=reason, as_timeout=True), REDIS_REPLY_TIMEOUT_S
        )
        logger.info("batch %s: deadline reached; unfinished tasks ended as timeout", batch_id)

    async def _recreate(self, batch_id: str, lost: Sequence[AgentTask]) -> None:
        kept = {task.id for task in lost}
        pruned = [
            task.model_copy(update={"depends_on": [dep for dep in task.depends_on if dep in kept]})
            for task in lost
        ]
        await outlasting_outages(
            lambda: self.store.submit(
                batch_id, dependency_order(dependency_waves(pruned)), fields={"recreated": 1}, recreate=True
            ),
            REDIS_REPLY_TIMEOUT_S * (1 + len(pruned) // 500),
        )

    async def wait(
        self,
        batch_id: str,
        *,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[ExecutionResult]:
        """Follow a batch (submitted by anyone) until every task has a result; results in order.

        Raises ``TaskInputError`` for an unknown batch, ``BatchLost`` if its record disappears, and
        ``DeadlineReached`` after ``timeout_s`` (the batch goes on).
        """
        with refusals(self._url):
            await self._require(batch_id)
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            waiter = BatchWaiter(
                self.store,
                batch_id,
                on_progress=on_progress,
                deadline=deadline,
                watch_workers=not self.settings.embedded,
            )
            found = {result.task_id: result async for result in waiter.results()}
            order = await self.store.task_ids(batch_id)
            return [found[task_id] for task_id in order if task_id in found]

    async def as_completed(
        self, batch_id: str, *, timeout_s: float | None = None
    ) -> AsyncIterator[ExecutionResult]:
        """Each task's result as soon as it ends, for batches too big to hold (nothing is kept here)."""
        with refusals(self._url):
            await self._require(batch_id)
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            async for result in BatchWaiter(self.store, batch_id, deadline=deadline).results():
                yield result

    async def events(
        self, batch_id: str | None = None, since: str | None = None, *, follow: bool = True
    ) -> AsyncIterator[Event]:
        """Lifecycle events of one batch (or of all) after ``since`` (a stream id; default: the oldest
        kept). With ``follow`` it waits for new ones forever; without, it stops at the newest."""
        with refusals(self._url):
            last = since or "0-0"
            if follow:
                async for event in follow_events(self.redis, batch_id, last):
                    yield event
                return
            while True:
                events = await read_events(self.redis, batch_id, last)
                for event in events:
                    yield event
                if not events:
                    return
                last = events[-1].id

    async def results(self, batch_id: str) -> list[ExecutionResult]:
        """Every task of a recorded batch: its result, or its current status."""
        with refusals(self._url):
            results = await self.store.results(batch_id)
            if results is None:
                raise self._unknown(batch_id)
            return results

    async def summary(self, batch_id: str) -> BatchSummary:
        """The batch's counts per status, totals (tokens, cost, per agent and model), and times."""
        with refusals(self._url):
            summary = await self.store.summary(batch_id)
            if summary is None:
                raise self._unknown(batch_id)
            return summary

    async def batches(self, limit: int = 50) -> list[BatchSummary]:
        """Recent batches, newest first."""
        with refusals(self._url):
            return await self.store.recent(limit)

    async def cancel(self, batch_id: str) -> tuple[int, int, int]:
        """Cancel a batch: queued and waiting tasks end at once, running ones are aborted.

        Returns (queued ended, waiting ended, running asked to abort).
        """
        with refusals(self._url):
            counts = await self.store.cancel(batch_id, reason="cancelled by user")
            if counts is None:
                raise self._unknown(batch_id)
            return counts

    async def _require(self, batch_id: str) -> None:
        if not await self.store.exists(batch_id):
            raise self._unknown(batch_id)

    @staticmethod
    def _unknown(batch_id: str) -> TaskInputError:
        return TaskInputError(f"no batch {batch_id!r} (unknown, or its results have expired)", field="batch")

    def _lookup(self, task_id: str) -> AgentTask:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskInputError(
                f"unknown task {task_id!r}; add it with add_tasks() first", field="id"
            ) from None
