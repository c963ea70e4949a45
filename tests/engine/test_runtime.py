"""WorkerRuntime on fakeredis: the gauges, a batch budget's reservations, the usage of retried attempts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from arq.connections import ArqRedis

from coditect.engine.context import JobRun
from coditect.engine.metrics import WorkerMetrics
from coditect.engine.runtime import BUDGET_RETRY_S, BudgetRefused, WorkerRuntime
from coditect.engine.worker import CoditectWorker
from coditect.execution.executor import TaskExecutor
from coditect.keys import BATCH_KEY_PREFIX, USAGE_PREFIX, job_id_for
from coditect.llm.prices import Price, PriceTable
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus, TokenUsage
from coditect.settings import Settings
from tests.engine.support import Probe
from tests.support.fake_backend import wait_until


async def test_the_gauges_count_waiting_tasks_apart_from_the_ones_held(
    settings: Settings, pool: ArqRedis, start_worker: Callable[..., CoditectWorker], probe: Probe
) -> None:
    worker = start_worker(max_jobs=1)
    for job_id in ("held", "waiting-1", "waiting-2"):
        await pool.enqueue_job("hold", _job_id=job_id)
    await probe.wait_started("held")
    metrics = WorkerMetrics()
    runtime = WorkerRuntime(pool, TaskExecutor(settings), worker=worker, metrics=metrics)
    runtime.start_gauges()
    try:

        async def refreshed() -> bool:
            return metrics.registry.get_sample_value("coditect_tasks_in_flight") == 1

        await wait_until(refreshed, what="the first refresh")
        depth = metrics.registry.get_sample_value("coditect_queue_depth")
    finally:
        probe.release.set()
        await runtime.aclose()

    # The held job stays in the queue under its lease: it is in flight, not waiting.
    assert depth == 2


async def test_a_budget_reservation_admits_defers_then_refuses(settings: Settings, pool: ArqRedis) -> None:
    runtime = WorkerRuntime(pool, TaskExecutor(settings))
    tasks = [AgentTask(id=f"t{n}", title=f"Task {n}") for n in range(1, 4)]
    _, estimate = runtime.executor.estimate(tasks[0])  # the offline provider is free: tokens only
    meta = BATCH_KEY_PREFIX + "b"
    await pool.hset(meta, mapping={"total": 3, "budget_tokens": estimate * 5 // 2})

    def run(task: AgentTask) -> JobRun:
        return JobRun(job_id=job_id_for("b", task.id), job_try=1, batch_id="b", task_id=task.id, budget=True)

    try:
        first = await runtime.reserve(run(tasks[0]), tasks[0], None, None, {})
        again = await runtime.reserve(run(tasks[0]), tasks[0], None, None, {})  # its worker died: kept
        second = await runtime.reserve(run(tasks[1]), tasks[1], None, None, {})
        third = await runtime.reserve(run(tasks[2]), tasks[2], None, None, {})
        held = await pool.hget(meta, "reserved_tokens")
        await pool.hset(meta, "out", estimate * 5 // 2)  # the running tasks spent it
        spent = await runtime.reserve(run(tasks[2]), tasks[2], None, None, {})
    finally:
        await runtime.aclose()

    assert (first, again, second) == (None, None, None)
    assert int(held) == 2 * estimate
    assert third == BUDGET_RETRY_S  # no room while the other two hold theirs
    budget = estimate * 5 // 2
    assert spent == BudgetRefused(f"budget exhausted: {budget} of {budget} tokens spent")
    assert await pool.hget(meta, "cancelled") == spent.reason.encode()


@pytest.mark.parametrize(
    ("spent", "budget", "message"),
    [
        (0.00043, 0.0004, "$0.000430 of $0.000400"),
        (0.0004001, 0.0004, "$0.0004001 of $0.0004000"),  # as many digits as it takes to tell them apart
        (0.0004, 0.0004, "$0.000400 of $0.000400"),
        (0.045, 0.0375, "$0.0450 of $0.0375"),
        (0.001, 0.001, "$0.00100 of $0.00100"),
        (2.5037, 2.5, "$2.504 of $2.500"),
        (1500.0, 1000.0, "$1500.00 of $1000.00"),
    ],
)
async def test_a_spent_budget_reads_with_enough_digits_to_tell_spent_from_budget(
    settings: Settings, pool: ArqRedis, spent: float, budget: float, message: str
) -> None:
    runtime = WorkerRuntime(pool, TaskExecutor(settings))
    task = AgentTask(id="t1", title="Task 1")
    await pool.hset(BATCH_KEY_PREFIX + "b", mapping={"total": 1, "budget_usd": budget, "cost": spent})
    run = JobRun(job_id=job_id_for("b", task.id), job_try=1, batch_id="b", task_id=task.id, budget=True)
    try:
        refused = await runtime.reserve(run, task, None, None, {})
    finally:
        await runtime.aclose()

    assert refused == BudgetRefused(f"budget exhausted: {message} spent")


async def test_a_retried_attempts_usage_is_added_to_the_final_result(
    settings: Settings, pool: ArqRedis
) -> None:
    prices = PriceTable({"priced-1": Price(3.0, 15.0, 0.3, 3.75)})
    runtime = WorkerRuntime(pool, TaskExecutor(settings, prices=prices))
    first, last = TokenUsage(input_tokens=6, output_tokens=4), TokenUsage(input_tokens=5, output_tokens=3)
    final = ExecutionResult(
        task_id="t", status=ExecutionStatus.SUCCESS, provider="anthropic", model="priced-1", usage=last
    )
    try:
        await runtime.keep_usage("job", final.model_copy(update={"usage": first}))
        await runtime.keep_usage("job", final.model_copy(update={"usage": TokenUsage()}))  # adds nothing
        summed = await runtime.with_prior_usage("job", final)
        left = await pool.exists(USAGE_PREFIX + "job")
    finally:
        await runtime.aclose()

    assert summed.usage == TokenUsage(input_tokens=11, output_tokens=7)
    assert summed.cost_usd == pytest.approx((11 * 3.0 + 7 * 15.0) / 1e6)
    assert left == 0
