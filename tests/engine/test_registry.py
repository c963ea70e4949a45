"""Live workers: each worker's entry in ``coditect:workers`` / ``coditect:worker:<token>``."""

from __future__ import annotations

from collections.abc import Callable

from arq.connections import ArqRedis
from arq.worker import func

from coditect.engine.registry import WorkerRegistry, live_workers
from coditect.engine.worker import CoditectWorker
from coditect.keys import WORKER_KEY_PREFIX, WORKERS_KEY
from tests.engine.support import Probe, echo, result_of
from tests.support.fake_backend import QUEUE, FakeBackend, now_ms, wait_until

ECHO = [func(echo, name="echo")]


async def test_a_running_worker_describes_itself_and_leaves_when_closed(
    pool: ArqRedis, probe: Probe, backend: FakeBackend, start_worker: Callable[..., CoditectWorker]
) -> None:
    worker = start_worker(max_jobs=5)
    await pool.enqueue_job("echo", 1, _job_id="j1")
    await result_of(pool, "j1")

    (info,) = await wait_until(lambda: live_workers(pool), what="the worker's entry")

    assert (info.token, info.name, info.queue, info.max_jobs) == (worker.token, worker.worker_name, QUEUE, 5)
    assert info.started_ms <= info.heartbeat_ms <= now_ms()
    assert 0 < await pool.pttl(WORKER_KEY_PREFIX + worker.token) <= worker.lease_s * 1000
    await backend.stop_worker(worker)
    assert await live_workers(pool) == []
    assert await pool.exists(WORKERS_KEY, WORKER_KEY_PREFIX + worker.token) == 0


async def test_a_beat_records_counts_and_in_flight_jobs(pool: ArqRedis, backend: FakeBackend) -> None:
    worker = CoditectWorker(ECHO, redis_pool=backend.pool(), queue_name="q1", handle_signals=False)
    worker.jobs_complete, worker.jobs_failed, worker.jobs_retried = 3, 2, 1
    registry = WorkerRegistry(worker)

    await registry.beat(30)

    (info,) = await live_workers(pool)
    assert (info.complete, info.failed, info.retried, info.in_flight) == (3, 2, 1, 0)
    assert 29_000 < await pool.pttl(WORKER_KEY_PREFIX + worker.token) <= 30_000
    await registry.leave()
    assert await live_workers(pool) == []


async def test_live_workers_skips_stale_and_vanished_entries_and_filters_by_queue(
    pool: ArqRedis, backend: FakeBackend
) -> None:
    workers = [
        CoditectWorker(ECHO, redis_pool=backend.pool(), queue_name=queue, handle_signals=False)
        for queue in ("q1", "q2", "q1")
    ]
    for worker in workers:
        await WorkerRegistry(worker).beat(30)
    await pool.hset(WORKER_KEY_PREFIX + workers[2].token, "heartbeat", now_ms() - 31_000)  # stopped beating
    await pool.zadd(WORKERS_KEY, {"gone-token": now_ms()})  # its hash expired

    assert {info.token for info in await live_workers(pool)} == {workers[0].token, workers[1].token}
    assert [info.token for info in await live_workers(pool, "q1")] == [workers[0].token]
    assert await live_workers(pool, "q3") == []


async def test_no_workers_at_all(pool: ArqRedis) -> None:
    assert await live_workers(pool) == []
