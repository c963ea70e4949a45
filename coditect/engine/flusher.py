"""Writes finished jobs to Redis in batches: one script call for everything that finished meanwhile.

A job hands its record to ``submit`` and waits until it is written. While one write is in flight
the next records gather, so under load many jobs share one round trip and, when idle, a record is
written at once. A Redis error keeps the records and tries again with backoff: a result is never
dropped because Redis blinked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from coditect.backoff import redis_backoff_s
from coditect.keys import leases_key

__all__ = ["FinishRecord", "ResultFlusher"]

logger = logging.getLogger(__name__)

MAX_RECORDS_PER_CALL = 500
REPLY_TIMEOUT_S = 10.0


@dataclass(slots=True)
class FinishRecord:
    """One job's last word: ``done`` with its result, or ``again``/``defer`` with the score to run it at.

    ``info`` is the batch bookkeeping of a batch task (JSON, see ``finish.lua``), else empty;
    ``keep_in_progress_ms`` keeps the in-progress key that long instead of deleting it.
    """

    kind: str
    job_id: str
    payload: bytes | int
    result_ttl_ms: int = 0
    keep_in_progress_ms: int = 0
    info: str = ""
    written: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def args(self) -> list[bytes | str | int]:
        return [self.kind, self.job_id, self.payload, self.result_ttl_ms, self.keep_in_progress_ms, self.info]


class ResultFlusher:
    """Batches ``FinishRecord`` writes through the finish script (called as redis-py's ``AsyncScript``,
    with ``keys=`` and ``args=``); ``head()`` gives its leading ARGV."""

    def __init__(
        self,
        script: Callable[..., Awaitable[Any]],
        *,
        queue_name: str,
        head: Callable[[], list[bytes | str | int]],
        reply_timeout_s: float = REPLY_TIMEOUT_S,
    ) -> None:
        self._script = script
        self._keys = [queue_name, leases_key(queue_name)]
        self._head = head
        self._reply_timeout_s = reply_timeout_s
        self._pending: list[FinishRecord] = []
        self._arrived = asyncio.Event()
        self._wrote: asyncio.Future[None] | None = None  # what close() waits on between writes
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="coditect-result-flusher")

    async def submit(self, record: FinishRecord) -> None:
        """Queue ``record`` and wait until Redis has it. A job cancelled meanwhile stops waiting (its
        ``written`` is cancelled), and its record is written all the same: it stays in the queue."""
        self._pending.append(record)
        self._arrived.set()
        await record.written

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._pending:
                batch = self._pending[:MAX_RECORDS_PER_CALL]
                args = self._head()
                for record in batch:
                    args += record.args()
                try:
                    # A reply that never comes (no RST) is given up on; the records are sent again.
                    async with asyncio.timeout(self._reply_timeout_s):
                        await self._script(keys=self._keys, args=args)
                except (RedisError, OSError) as err:  # OSError includes TimeoutError
                    delay = redis_backoff_s(failures)
                    failures += 1
                    logger.warning(
                        "writing %d result(s) failed (%s); retrying in %.2f s",
                        len(batch),
                        str(err) or repr(err),
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                del self._pending[: len(batch)]
                for record in batch:
                    if not record.written.done():
                        record.written.set_result(None)
                if self._wrote is not None and not self._wrote.done():
                    self._wrote.set_result(None)

    async def close(self, timeout_s: float = 30.0) -> None:
        """Write what is pending (for at most ``timeout_s``), then stop."""
        if self._task is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                while self._pending and not self._task.done():
                    self._wrote = asyncio.get_running_loop().create_future()
                    await self._wrote
        except TimeoutError:
            logger.error("%d result(s) could not be written before shutdown", len(self._pending))
            for record in self._pending:
                if not record.written.done():
                    record.written.set_exception(ConnectionError("result not written: worker shut down"))
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
