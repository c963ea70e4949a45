"""Riding out Redis outages: one backoff schedule for every retry loop in coditect."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coditect.errors import RedisOutageError

__all__ = [
    "REDIS_BACKOFF_S",
    "REDIS_DOWN",
    "REDIS_OUTAGE_LIMIT_S",
    "Outage",
    "outlasting_outages",
    "redis_backoff_s",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# NoScriptError: a failed-over Redis has not seen our scripts yet; sending again loads them.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, NoScriptError, OSError)
# Give up only once Redis has been unreachable this long in a row.
REDIS_OUTAGE_LIMIT_S = 60.0

REDIS_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def redis_backoff_s(failures: int) -> float:
    """The delay after ``failures`` failures in a row (0 for the first): doubling, capped at 2 s."""
    return REDIS_BACKOFF_S[min(failures, len(REDIS_BACKOFF_S) - 1)]


class Outage:
    """Backoff while Redis is unreachable; gives up once it was down ``limit_s`` in a row.

    ``limit_s`` defaults to ``REDIS_OUTAGE_LIMIT_S`` as it is when the outage is created.
    """

    def __init__(self, limit_s: float | None = None) -> None:
        self.limit_s = REDIS_OUTAGE_LIMIT_S if limit_s is None else limit_s
        self.failures = 0
        self.since: float | None = None

    async def backoff(self, err: Exception) -> None:
        """Sleep before the next try; ``RedisOutageError`` (caused by ``err``) once past the limit."""
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        if now - self.since >= self.limit_s:
            raise RedisOutageError(self.limit_s, err) from err
        delay = redis_backoff_s(self.failures)
        self.failures += 1
        logger.warning("Redis unreachable (%s); trying again in %.2f s", str(err) or repr(err), delay)
        await asyncio.sleep(delay)

    def over(self) -> None:
        self.failures, self.since = 0, None


async def outlasting_outages(step: Callable[[], Awaitable[_T]], timeout_s: float) -> _T:
    """``await step()``, again after a backoff while Redis is unreachable (``step`` must be idempotent)."""
    outage = Outage()
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                return await step()
        except REDIS_DOWN as err:
            await outage.backoff(err)
