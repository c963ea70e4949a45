"""The embedded backend: an in-process Redis (fakeredis) with coditect workers on the caller's loop.

With no ``CODITECT_REDIS_URL`` the orchestrator runs the same code path as with a real Redis: it
submits batches and follows their events; only the server and the workers live in this process.
``start`` returns once every worker is ready, and raises what stopped one (a provider with no API
key, say), so nothing ever waits for workers that are not there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import fakeredis
from arq.connections import ArqRedis

from coditect.engine.context import AGENTS_KEY, EMBEDDED_KEY, SETTINGS_KEY
from coditect.engine.create import create_worker
from coditect.engine.worker import CoditectWorker
from coditect.serialization import job_deserializer, job_serializer
from coditect.settings import Settings

if TYPE_CHECKING:
    from coditect.agents import AgentRegistry

__all__ = ["EmbeddedBackend"]

logger = logging.getLogger(__name__)


class EmbeddedBackend:
    """One fake Redis server and ``settings.embedded_workers`` in-process workers."""

    def __init__(self, settings: Settings, *, agents: AgentRegistry | None = None) -> None:
        self.settings = settings
        self.agents = agents
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
            worker = create_worker(
                self.settings,
                redis_pool=self.pool(),
                handle_signals=False,
                ctx={SETTINGS_KEY: self.settings, EMBEDDED_KEY: True, AGENTS_KEY: self.agents},
            )
            self.workers.append(worker)
            self._runs.append(asyncio.create_task(worker.async_run(), name="coditect-embedded-worker"))
        for worker, run in zip(self.workers, self._runs, strict=True):
            ready = asyncio.ensure_future(worker.started.wait())
            await asyncio.wait([ready, run], return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if run.done():
                error = run.exception() if not run.cancelled() else None
                await self.stop()
                if error is not None:
                    raise error
                raise RuntimeError("an embedded worker stopped before it was ready")
        logger.debug("embedded backend started %d worker(s)", len(self.workers))

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.close()
        for run in self._runs:
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        self.workers.clear()
        self._runs.clear()
