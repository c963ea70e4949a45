"""An in-process Redis (fakeredis) with ARQ pools and CoditectWorkers on it, for fast unit tests.

``FakeBackend`` is an async context manager: everything it built (client pools, workers and their run
tasks) is closed when it exits, as ARQ's own test fixtures do. ``wait_until`` is the bounded poll that
replaces sleeps when a test must observe something another task does to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import fakeredis
import pytest
from arq.connections import ArqRedis
from arq.worker import Function, Worker

from coditect.engine.worker import CoditectWorker
from coditect.keys import wake_channel
from coditect.serialization import job_deserializer, job_serializer

__all__ = ["QUEUE", "FakeBackend", "now_ms", "wait_until"]

QUEUE = "coditect:queue"

_T = TypeVar("_T")


def now_ms() -> int:
    return int(time.time() * 1000)


async def wait_until(
    probe: Callable[[], Awaitable[_T]], *, timeout_s: float = 5.0, interval_s: float = 0.01, what: str = ""
) -> _T:
    """Await ``probe()`` until it returns something truthy (and return it); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what or probe}")
        await asyncio.sleep(interval_s)


class FakeBackend:
    """One fakeredis server; pools and in-process workers on it, all closed on exit."""

    def __init__(self, queue_name: str = QUEUE) -> None:
        self.server = fakeredis.FakeServer()
        self.queue_name = queue_name
        self._pools: list[ArqRedis] = []
        self._runs: dict[Worker, asyncio.Task[None]] = {}

    async def __aenter__(self) -> FakeBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for worker in list(self._runs):
            await self.stop_worker(worker)
        for pool in self._pools:
            await pool.aclose(close_connection_pool=True)

    def pool(self, *, track: bool = True) -> ArqRedis:
        """A client speaking coditect's JSON jobs; closed on exit unless ``track`` is False."""
        fake = fakeredis.FakeAsyncRedis(server=self.server)
        pool = ArqRedis(
            connection_pool=fake.connection_pool,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
            default_queue_name=self.queue_name,
        )
        if track:
            self._pools.append(pool)
        return pool

    def worker(
        self,
        functions: Sequence[Function | Callable[..., Any]] = (),
        *,
        lease_s: float | None = None,
        **options: Any,
    ) -> CoditectWorker:
        """A started CoditectWorker (``async_run`` in a task); it is closed on exit or by ``stop_worker``."""
        defaults: dict[str, Any] = {
            "queue_name": self.queue_name,
            "poll_delay": 0.02,
            "allow_abort_jobs": True,
            "job_serializer": job_serializer,
            "job_deserializer": job_deserializer,
            "keep_result": 3600,
        }
        if functions:
            defaults["functions"] = list(functions)
        worker = CoditectWorker(
            **{**defaults, **options}, redis_pool=self.pool(track=False), handle_signals=False
        )
        if lease_s is not None:
            worker.lease_s = lease_s
        self.start(worker)
        return worker

    def start(self, worker: Worker) -> asyncio.Task[None]:
        """Run any ARQ worker built on one of this server's pools; it is closed on exit."""
        run = self._runs[worker] = asyncio.create_task(worker.async_run(), name="test-worker")
        return run

    def run_task(self, worker: Worker) -> asyncio.Task[None]:
        return self._runs[worker]

    async def stop_worker(self, worker: Worker) -> None:
        """Close the worker, then await its run task (a crash in the engine fails the test here)."""
        run = self._runs.pop(worker)
        await worker.close()
        with contextlib.suppress(asyncio.CancelledError):
            await run

    async def listening(self, count: int = 1, pool: ArqRedis | None = None) -> None:
        """Wait until ``count`` workers are subscribed to the queue's wake-up channel."""
        client = pool or self.pool()
        channel = wake_channel(self.queue_name)

        async def subscribed() -> bool:
            ((_, number),) = await client.pubsub_numsub(channel)
            return bool(number >= count)

        await wait_until(subscribed, what=f"{count} worker(s) subscribed to {channel}")
