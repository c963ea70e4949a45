"""WorkerRuntime's gauges on an in-process worker: queue depth and tasks in flight."""

from __future__ import annotations

from collections.abc import Callable

from arq.connections import ArqRedis

from coditect.engine.metrics import WorkerMetrics
from coditect.engine.runtime import WorkerRuntime
from coditect.engine.worker import CoditectWorker
from coditect.execution.executor import TaskExecutor
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
