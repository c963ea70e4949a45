"""SAQ: ``saq benchmarks.peer_apps.saq_app.settings --workers 1``, and its client.

SAQ logs at ERROR unless ``-v`` is given, so its workers log no line per job.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from saq import Queue

from benchmarks.peer_apps.common import (
    RESULT_TIMEOUT_S,
    WrongResults,
    check_values,
    concurrency,
    pooled_redis_url,
    say_ready,
)

__all__ = ["SaqClient", "settings"]

WAKE_UP_WAIT_S = 5.0  # how long one job's wait listens before it reads the job again


async def noop(ctx: dict[str, Any], *, value: int) -> int:
    return value


async def nap(ctx: dict[str, Any], *, value: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return value


async def startup(ctx: dict[str, Any]) -> None:
    say_ready("saq")


settings: dict[str, Any] = {
    "queue": Queue.from_url(pooled_redis_url()),
    "functions": [noop, nap],
    "concurrency": concurrency(),
    "startup": startup,
}


class SaqClient:
    """``Queue.map`` for a batch (it polls every ``MAP_POLL_S``); ``Job.refresh(until_complete)`` for
    one job (pub/sub, read again after ``WAKE_UP_WAIT_S`` without news)."""

    MAP_POLL_S = 0.5  # Queue.map's default

    def __init__(self) -> None:
        self.queue = Queue.from_url(pooled_redis_url())

    async def batch(self, count: int, sleep_s: float) -> None:
        function, extra = ("nap", {"seconds": sleep_s}) if sleep_s else ("noop", {})
        kwargs = [{"value": i, **extra} for i in range(count)]
        values = await self.queue.map(
            function, kwargs, timeout=RESULT_TIMEOUT_S, poll_interval=self.MAP_POLL_S
        )
        check_values(values, count)

    async def round_trip(self, value: int) -> None:
        job = await self.queue.enqueue("noop", value=value)
        if job is None:
            raise WrongResults("SAQ refused to enqueue a job")
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        while not job.completed:
            if time.monotonic() > deadline:
                raise WrongResults(f"job {value} not finished in {RESULT_TIMEOUT_S} s")
            try:
                await job.refresh(until_complete=WAKE_UP_WAIT_S)
            except TimeoutError:
                # refresh reads the job, then subscribes: a job finished in between is never announced.
                await job.refresh()
        if job.result != value:
            raise WrongResults(f"job {value} returned {job.result!r}")

    async def close(self) -> None:
        await self.queue.disconnect()
