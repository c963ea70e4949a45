"""CoditectWorker: ARQ's ``Worker`` with the start-up it needs for the embedded backend.

ARQ's ``Worker.main`` logs the server's ``INFO`` before anything else, and the embedded backend
(fakeredis) has no ``INFO`` command. This subclass runs the same start-up and poll loop but logs
the server info only when the server answers ``INFO``; against a real Redis nothing changes.
Everything else (claiming, running, retrying, results) is ARQ's own code.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.connections import create_pool
from arq.utils import poll
from arq.worker import Worker
from redis.exceptions import ResponseError

__all__ = ["CoditectWorker"]

logger = logging.getLogger(__name__)


class CoditectWorker(Worker):  # type: ignore[misc]  # arq ships no type information for mypy here
    """An ARQ worker that also runs on servers without ``INFO`` (fakeredis)."""

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        logger.info("worker for queue %s: functions %s", self.queue_name, ", ".join(self.functions))
        await self._log_server_info()
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        async for _ in poll(self.poll_delay_s):
            await self._poll_iteration()
            if self.burst and await self._burst_done():
                return

    async def _log_server_info(self) -> None:
        try:
            info: dict[str, Any] = await self.pool.info(section="Server")
        except ResponseError:
            logger.info("redis server without INFO (embedded backend)")
            return
        logger.info("redis_version=%s db_keys=%s", info.get("redis_version", "?"), await self.pool.dbsize())

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False
