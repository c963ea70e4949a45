"""ARQ: ``arq benchmarks.peer_apps.arq_app.WorkerSettings --custom-log-dict
benchmarks.peer_apps.arq_app.LOG_CONFIG``, and its client.

ARQ's defaults (pickle, ``arq:queue``, ``poll_delay`` 0.5 s) except the concurrency (``max_jobs``) and,
with ``BENCH_PEERS_POLL_S``, the worker's poll delay and the client's result polls. ``LOG_CONFIG``
turns ARQ's two INFO lines per job off.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool

from benchmarks.peer_apps.common import (
    RESULT_TIMEOUT_S,
    WrongResults,
    check_values,
    concurrency,
    redis_url,
    say_ready,
)

__all__ = ["LOG_CONFIG", "ArqClient", "WorkerSettings"]

DEFAULT_POLL_S = 0.5  # ARQ 0.28: Worker(poll_delay=0.5) and Job.result(poll_delay=0.5)

LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


def poll_s() -> float:
    return float(os.environ.get("BENCH_PEERS_POLL_S", DEFAULT_POLL_S))


async def noop(ctx: dict[str, Any], value: int) -> int:
    return value


async def nap(ctx: dict[str, Any], value: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return value


async def startup(ctx: dict[str, Any]) -> None:
    say_ready("arq")


# ARQ reads its settings from the class __dict__, so each is set on the class itself.
WorkerSettings = type(
    "WorkerSettings",
    (),
    {
        "functions": [noop, nap],
        "on_startup": startup,
        "redis_settings": RedisSettings.from_dsn(redis_url()),
        "max_jobs": concurrency(),
        "poll_delay": poll_s(),
    },
)


class ArqClient:
    """Gathered ``enqueue_job``, then gathered ``Job.result()``, as ARQ's docs show."""

    def __init__(self) -> None:
        self.pool: ArqRedis | None = None

    async def _pool(self) -> ArqRedis:
        if self.pool is None:
            self.pool = await create_pool(RedisSettings.from_dsn(redis_url()))
        return self.pool

    async def batch(self, count: int, sleep_s: float) -> None:
        pool = await self._pool()
        if sleep_s:
            jobs = await asyncio.gather(*(pool.enqueue_job("nap", i, sleep_s) for i in range(count)))
        else:
            jobs = await asyncio.gather(*(pool.enqueue_job("noop", i) for i in range(count)))
        values = await asyncio.gather(
            *(job.result(timeout=RESULT_TIMEOUT_S, poll_delay=poll_s()) for job in jobs if job is not None)
        )
        check_values(list(values), count)

    async def round_trip(self, value: int) -> None:
        job = await (await self._pool()).enqueue_job("noop", value)
        if job is None:
            raise WrongResults("ARQ refused to enqueue a job")
        result = await job.result(timeout=RESULT_TIMEOUT_S, poll_delay=poll_s())
        if result != value:
            raise WrongResults(f"job {value} returned {result!r}")

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose(close_connection_pool=True)
