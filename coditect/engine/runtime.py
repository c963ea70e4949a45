"""What a worker holds for coditect's task job, made once at start-up and closed at shutdown.

The executor (and its HTTP pool), the shared rate limiter, the price table, the metrics, and the
per-task steps around a run that need Redis: a dependant's inputs, delegation through the batch, a
reservation against the batch's budget, and the usage of earlier attempts (a retried task's result
counts the tokens of every attempt that reached the provider).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from coditect.engine.delegation import BatchDelegator
from coditect.execution.context import RunContext
from coditect.keys import (
    BATCH_KEY_PREFIX,
    RESULT_PREFIX,
    RETRY_COUNTER_TTL_S,
    USAGE_PREFIX,
    job_id_for,
    leases_key,
)
from coditect.lua import script
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus, TokenUsage
from coditect.results import result_from_arq

if TYPE_CHECKING:
    from coditect.engine.context import JobRun
    from coditect.engine.metrics import MetricsServer, WorkerMetrics
    from coditect.engine.worker import CoditectWorker
    from coditect.execution.executor import TaskExecutor

__all__ = ["BUDGET_RETRY_S", "BudgetRefused", "PriorUsage", "WorkerRuntime", "refused_result"]

logger = logging.getLogger(__name__)

# A task whose budget has room only once the tasks running now settle asks again after this.
BUDGET_RETRY_S = 1.0
GAUGES_EVERY_S = 5.0
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


@dataclass(frozen=True, slots=True)
class PriorUsage:
    """What a job's earlier attempts used, and the provider and model of the latest that used any."""

    usage: TokenUsage
    provider: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class BudgetRefused:
    """The batch's budget is spent: the task ends cancelled with ``reason``."""

    reason: str


@dataclass
class WorkerRuntime:
    """One worker's executor, limiter, prices and metrics, and the Redis steps around each run."""

    redis: ArqRedis
    executor: TaskExecutor
    worker: CoditectWorker | None = None
    metrics: WorkerMetrics | None = None
    metrics_server: MetricsServer | None = None
    _gauges: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._budget = self.redis.register_script(script("budget"))

    def start_gauges(self) -> None:
        """Queue depth and tasks in flight, every ``GAUGES_EVERY_S``, while metrics are served."""
        if self.metrics is not None and self.worker is not None:
            self._gauges = asyncio.create_task(self._refresh_gauges(), name="coditect-gauges")

    async def _refresh_gauges(self) -> None:
        assert self.metrics is not None
        assert self.worker is not None
        while True:
            with contextlib.suppress(RedisError, OSError):
                async with asyncio.timeout(GAUGES_EVERY_S):
                    self.metrics.set_queue_depth(await self._waiting())
            self.metrics.set_in_flight(len(self.worker.tasks))
            await asyncio.sleep(GAUGES_EVERY_S)

    async def _waiting(self) -> int:
        """Tasks in the queue that no worker holds: a claimed job stays in the queue under its lease."""
        assert self.worker is not None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.worker.queue_name)
            pipe.zcard(leases_key(self.worker.queue_name))
            queued, held = await pipe.execute()
        return max(0, int(queued) - int(held))

    async def aclose(self) -> None:
        if self._gauges is not None:
            self._gauges.cancel()
            await asyncio.gather(self._gauges, return_exceptions=True)
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.close)
        await self.executor.aclose()

    # -- around one run -----------------------------------------------------------------------

    async def run_context(self, task: AgentTask, run: JobRun | None) -> RunContext:
        """The engine's side of a run: its slot, its dependencies' outputs, delegation, metrics."""
        on_wait = self.metrics.rate_limit_wait if self.metrics is not None else None
        if run is None:
            return RunContext(on_capacity_wait=on_wait)
        if run.batch_id is None or self.worker is None:
            return RunContext(idle=run.idle, depth=run.depth, on_capacity_wait=on_wait)
        inputs: dict[str, str] = {}
        if task.depends_on:
            job_ids = [job_id_for(run.batch_id, dep) for dep in task.depends_on]
            values = await self.redis.mget([RESULT_PREFIX + job_id for job_id in job_ids])
            for dep, job_id, raw in zip(task.depends_on, job_ids, values, strict=True):
                if raw is not None:
                    inputs[dep] = result_from_arq(raw, job_id).output
        return RunContext(
            idle=run.idle,
            inputs=inputs,
            delegator=BatchDelegator(self.worker, run),
            depth=run.depth,
            on_capacity_wait=on_wait,
        )

    async def reserve(
        self, run: JobRun, task: AgentTask, agent: str | None, mode: str | None, inputs: dict[str, str]
    ) -> BudgetRefused | float | None:
        """Reserve the task's estimate against its batch's budget: None when reserved, the seconds to
        come back after when the budget has room only once running tasks settle, or a refusal."""
        assert run.batch_id is not None
        assert run.task_id is not None
        usd, tokens = self.executor.estimate(task, agent, mode, inputs=inputs)
        reply = await self._budget(args=[0, run.batch_id, run.task_id, repr(usd), tokens])
        status = int(reply[0])
        if status == 1:
            return None
        if status == -1:
            return BUDGET_RETRY_S
        reason = await self.redis.hget(BATCH_KEY_PREFIX + run.batch_id, "cancelled")  # type: ignore[misc]
        return BudgetRefused(reason.decode() if reason else "budget exhausted")

    async def prior_usage(self, job_id: str) -> PriorUsage:
        """What the job's earlier attempts used (kept by ``keep_usage`` when they were retried)."""
        raw = await self.redis.hgetall(USAGE_PREFIX + job_id)  # type: ignore[misc]
        fields = {name.decode(): value.decode() for name, value in raw.items()}
        usage = TokenUsage(**{name: int(fields.get(name, 0)) for name in _USAGE_FIELDS})
        return PriorUsage(usage, fields.get("provider"), fields.get("model"))

    async def keep_usage(self, job_id: str, result: ExecutionResult) -> None:
        """Add a retried attempt's usage to the job's tally, with its provider and model, so that the
        task's final result (even one that never runs again) counts and prices it."""
        usage = result.usage
        if not usage.total_tokens:
            return
        key = USAGE_PREFIX + job_id
        async with self.redis.pipeline(transaction=True) as pipe:
            for name in _USAGE_FIELDS:
                pipe.hincrby(key, name, getattr(usage, name))
            if result.model is not None:
                pipe.hset(key, mapping={"provider": result.provider or "", "model": result.model})
            pipe.expire(key, RETRY_COUNTER_TTL_S)
            await pipe.execute()

    async def with_prior_usage(self, job_id: str, result: ExecutionResult) -> ExecutionResult:
        """``result`` with the usage (and cost) of the job's earlier attempts added; a result that used
        no model (a task refused by its budget) takes the earlier attempts' provider and model."""
        prior = await self.prior_usage(job_id)
        if not prior.usage.total_tokens:
            return result
        result.usage = prior.usage + result.usage
        if result.model is None and prior.model:
            result.provider, result.model = prior.provider or None, prior.model
        if result.model is not None:
            result.cost_usd = self.executor.prices.cost_usd(
                result.model, result.usage, provider=result.provider
            )
        await self.redis.delete(USAGE_PREFIX + job_id)
        return result

    def finished(self, result: ExecutionResult) -> None:
        """Count a task that ended (the engine calls this once per task, whatever ended it)."""
        if self.metrics is not None:
            self.metrics.task_finished(result)

    def retried(self, agent: str) -> None:
        if self.metrics is not None:
            self.metrics.task_retried(agent)


def refused_result(task: AgentTask, refusal: BudgetRefused, job_try: int) -> ExecutionResult:
    return ExecutionResult(
        task_id=task.id, status=ExecutionStatus.CANCELLED, agent=task.agent, attempts=job_try - 1,
        error=refusal.reason,
    )  # fmt: skip
