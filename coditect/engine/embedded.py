"""The embedded backend: an in-process Redis (fakeredis) with ARQ workers on the caller's loop.

With no ``CODITECT_REDIS_URL`` the orchestrator runs the same code path as with a real Redis: it
enqueues ARQ jobs and awaits their results; only the server and the workers live in this process.
"""

from __future__ import annotations

import asyncio
import logging

import fakeredis
from arq.connections import ArqRedis

from coditect.engine.worker import CoditectWorker
from coditect.jobs import EMBEDDED_KEY, SETTINGS_KEY, worker_options
from coditect.serialization import job_deserializer, job_serializer
from coditect.settings import Settings

__all__ = ["EmbeddedBackend"]

logger = logging.getLogger(__name__)


class EmbeddedBackend:
    """One fake Redis server and ``settings.embedded_workers`` in-process workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = fakeredis.FakeServer()
        self.workers: list[CoditectWorker] = []
        self._runs: list[asyncio.Task[None]] = []

    def pool(self) -> ArqRedis:
        """A new client of the embedded server, speaking coditect's JSON jobs."""
        fake = fakeredis.FakeAsyncRedis(server=self.server)
        return ArqRedis(
            connection_pool=fake.connection_pool,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
            default_queue_name=self.settings.queue_name,
        )

    async def start(self) -> None:
        for _ in range(self.settings.embedded_workers):
            worker = CoditectWorker(
                **worker_options(self.settings),
                redis_pool=self.pool(),
                handle_signals=False,
                ctx={SETTINGS_KEY: self.settings, EMBEDDED_KEY: True},
            )
            self.workers.append(worker)
            self._runs.append(asyncio.create_task(worker.async_run(), name="coditect-embedded-worker"))
        logger.debug("embedded backend started %d worker(s)", len(self.workers))

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.close()
        for run in self._runs:
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        self.workers.clear()
        self._runs.clear()
