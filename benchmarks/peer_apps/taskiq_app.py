"""taskiq with taskiq-redis: ``taskiq worker benchmarks.peer_apps.taskiq_app:broker --workers 1
--max-async-tasks N --log-level WARNING`` (at INFO it logs a line per task), and its client."""

from __future__ import annotations

import asyncio

from taskiq import TaskiqEvents, TaskiqState
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from benchmarks.peer_apps.common import RESULT_TIMEOUT_S, WrongResults, check_values, redis_url, say_ready

__all__ = ["TaskiqClient", "broker"]

broker = ListQueueBroker(redis_url()).with_result_backend(RedisAsyncResultBackend(redis_url()))


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def ready(state: TaskiqState) -> None:
    say_ready("taskiq")


@broker.task
async def noop(value: int) -> int:
    return value


@broker.task
async def nap(value: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return value


class TaskiqClient:
    """Gathered ``kiq``, then gathered ``wait_result`` (its default 0.2 s checks) for a batch; one job
    is awaited with 10 ms checks."""

    ONE_JOB_CHECK_S = 0.01

    def __init__(self) -> None:
        self.started = False

    async def _start(self) -> None:
        if not self.started:
            await broker.startup()
            self.started = True

    async def batch(self, count: int, sleep_s: float) -> None:
        await self._start()
        if sleep_s:
            tasks = await asyncio.gather(*(nap.kiq(i, sleep_s) for i in range(count)))
        else:
            tasks = await asyncio.gather(*(noop.kiq(i) for i in range(count)))
        results = await asyncio.gather(*(task.wait_result(timeout=RESULT_TIMEOUT_S) for task in tasks))
        if any(result.is_err for result in results):
            raise WrongResults(f"{sum(r.is_err for r in results)} of {count} tasks failed")
        check_values([result.return_value for result in results], count)

    async def round_trip(self, value: int) -> None:
        await self._start()
        task = await noop.kiq(value)
        result = await task.wait_result(check_interval=self.ONE_JOB_CHECK_S, timeout=RESULT_TIMEOUT_S)
        if result.is_err or result.return_value != value:
            raise WrongResults(f"job {value} returned {result!r}")

    async def close(self) -> None:
        if self.started:
            await broker.shutdown()
