"""Scheduled batches, for the batches page: each schedule with its next run and the last batch it
submitted (read from ``CODITECT_SCHEDULE_FILE`` and Redis, as ``coditect schedule`` does)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis

from coditect.agents import AgentRegistry
from coditect.engine.schedule import load_schedules, tick_batch_id
from coditect.errors import ConfigurationError
from coditect.keys import SCHEDULES_KEY
from coditect.settings import Settings

__all__ = ["ScheduledBatch", "Schedules", "read_schedules"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScheduledBatch:
    name: str
    cron: str
    tasks: int
    next_run: datetime
    next_batch_id: str
    last_batch_id: str | None


@dataclass(frozen=True, slots=True)
class Schedules:
    """What the batches page shows: the entries, or why the file could not be read."""

    entries: list[ScheduledBatch]
    error: str | None = None


async def read_schedules(
    settings: Settings, agents: AgentRegistry, redis: Redis, now: datetime
) -> Schedules | None:
    """The scheduled batches and their next runs; None when no schedule file is set."""
    if settings.schedule_file is None:
        return None
    try:
        scheduled = load_schedules(settings.schedule_file, agents)
    except ConfigurationError as err:  # the page still renders, saying what is wrong with the file
        logger.warning("%s", err)
        return Schedules([], error=str(err))
    raw = await redis.hgetall(SCHEDULES_KEY)  # type: ignore[misc]
    last = {name.decode(): batch_id.decode() for name, batch_id in raw.items()}
    entries = []
    for entry in scheduled:
        name = entry.schedule.name
        tick = entry.schedule.next_tick(now)
        entries.append(
            ScheduledBatch(
                name, entry.schedule.cron, len(entry.tasks), tick, tick_batch_id(name, tick), last.get(name)
            )
        )
    return Schedules(entries)
