"""Scheduled batches: ``CODITECT_SCHEDULE_FILE`` names batches to submit on a cron schedule.

The file (JSON, or TOML by suffix)::

    {"schedules": [{"name": "nightly-docs", "cron": "0 3 * * *", "batch": "batches/docs.json"},
                   {"name": "ping", "cron": "*/30 * * * * *", "tasks": [{"title": "Say hello"}]}]}

``cron`` has 5 fields, or 6 where the first is seconds, in UTC (parsed by croniter). ``batch`` is a
batch file (relative to the schedule file), or ``tasks`` lists the batch inline.

Every worker started with the setting takes part: at each tick each submits the tick's batch, whose
id is ``<name>-<UTC time of the tick>`` (``nightly-docs-20261130T030000Z``). A batch is submitted by
one atomic script call that writes nothing when the id exists, so a tick runs exactly once however
many workers try it, and still once when one of them dies mid-tick (another's call creates it). A
tick that passed while no worker was up is not run late; one missed by less than ``LATE_TICK_S``
(a worker busy, or briefly unable to reach Redis) still is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from coditect.agents import AgentRegistry
from coditect.backoff import REDIS_DOWN, redis_backoff_s
from coditect.client.batchfile import load_batch_file, parse_batch
from coditect.client.graph import check_batch, dependency_order
from coditect.config_files import load_config_file
from coditect.errors import ConfigurationError, TaskInputError
from coditect.keys import SCHEDULES_KEY
from coditect.models import AgentTask

if TYPE_CHECKING:
    from coditect.client.batches import BatchStore

__all__ = [
    "LATE_TICK_S",
    "Schedule",
    "ScheduledBatch",
    "Scheduler",
    "describe",
    "load_schedules",
    "tick_batch_id",
]

logger = logging.getLogger(__name__)

# A tick missed by more than this (no worker was up, the process was stopped) is skipped, not run late.
LATE_TICK_S = 60.0
SCHEDULE_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,40}$"


class Schedule(BaseModel):
    """One entry of the schedule file."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=SCHEDULE_NAME_PATTERN)]
    cron: str
    batch: Path | None = None
    tasks: list[dict[str, Any]] | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        fields = value.split()
        if len(fields) not in (5, 6):
            raise ValueError(f"expected 5 fields, or 6 with seconds first; got {len(fields)}")
        if not croniter.is_valid(value, second_at_beginning=True):
            raise ValueError(f"not a valid cron expression: {value!r}")
        return " ".join(fields)

    @model_validator(mode="after")
    def _one_source(self) -> Schedule:
        if (self.batch is None) == (self.tasks is None):
            raise ValueError("give the batch as 'batch' (a batch file) or 'tasks' (inline), not both")
        return self

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (UTC)."""
        has_seconds = len(self.cron.split()) == 6
        ticks = croniter(self.cron, after.astimezone(UTC), second_at_beginning=has_seconds)
        tick: datetime = ticks.get_next(datetime)
        return tick.astimezone(UTC)


class _ScheduleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedules: list[Schedule]

    @model_validator(mode="after")
    def _unique(self) -> _ScheduleFile:
        names = [schedule.name for schedule in self.schedules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"schedule name {repeated[0]!r} appears more than once")
        return self


@dataclass(frozen=True, slots=True)
class ScheduledBatch:
    """A schedule with its tasks read, checked, and in dependency order."""

    schedule: Schedule
    tasks: tuple[AgentTask, ...]


def tick_batch_id(name: str, tick: datetime) -> str:
    """``<name>-<UTC time of the tick>``, e.g. ``nightly-docs-20261130T030000Z``."""
    return f"{name}-{tick.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def load_schedules(path: Path, agents: AgentRegistry) -> list[ScheduledBatch]:
    """Read the schedule file and every batch it names, and check each batch (ids, dependencies,
    agents); ConfigurationError naming the file and the field."""
    loaded = load_config_file(path, _ScheduleFile)
    scheduled = []
    for index, schedule in enumerate(loaded.schedules):
        where = f"{path}: schedules[{index}]"
        try:
            if schedule.batch is not None:
                batch_path = schedule.batch if schedule.batch.is_absolute() else path.parent / schedule.batch
                spec = load_batch_file(batch_path)
            else:
                spec = parse_batch(schedule.tasks, source=f"{where}.tasks", default_name=schedule.name)
            ordered = dependency_order(check_batch(spec.tasks, agents))
        except TaskInputError as err:
            raise ConfigurationError(f"{where} ({schedule.name}): {err}") from err
        scheduled.append(ScheduledBatch(schedule, tuple(ordered)))
    return scheduled


class Scheduler:
    """Submits each schedule's batches at its ticks, beside a worker (see the module docstring)."""

    def __init__(self, store: BatchStore, schedules: Sequence[ScheduledBatch]) -> None:
        self.store = store
        self.schedules = list(schedules)
        self.submitted: list[str] = []  # batch ids this process created (the others' are not counted)

    async def run(self) -> None:
        """Forever: sleep until the next tick, submit what is due, and so on."""
        now = datetime.now(UTC)
        next_ticks = {entry.schedule.name: entry.schedule.next_tick(now) for entry in self.schedules}
        failures = 0
        while self.schedules:
            now = datetime.now(UTC)
            due = [entry for entry in self.schedules if next_ticks[entry.schedule.name] <= now]
            if not due:
                wait_s = (min(next_ticks.values()) - now).total_seconds()
                await asyncio.sleep(max(0.0, wait_s))
                continue
            try:
                for entry in due:
                    tick = next_ticks[entry.schedule.name]
                    if (now - tick).total_seconds() <= LATE_TICK_S:
                        await self._submit(entry, tick)
                    else:
                        logger.warning("schedule %s: tick %s was missed; skipped", entry.schedule.name, tick)
                    late = now - timedelta(seconds=LATE_TICK_S)
                    next_ticks[entry.schedule.name] = entry.schedule.next_tick(max(tick, late))
                failures = 0
            except REDIS_DOWN as err:
                delay = redis_backoff_s(failures)
                failures += 1
                logger.warning("schedule: Redis unreachable (%s); trying again in %.2f s", err, delay)
                await asyncio.sleep(delay)

    async def _submit(self, entry: ScheduledBatch, tick: datetime) -> None:
        name = entry.schedule.name
        batch_id = tick_batch_id(name, tick)
        submitted = await self.store.submit(
            batch_id, entry.tasks, fields={"name": name, "schedule": name}, atomic=True
        )
        if submitted.created:
            self.submitted.append(batch_id)
            await self.store.redis.hset(SCHEDULES_KEY, name, batch_id)  # type: ignore[misc]
            logger.info("schedule %s: batch %s submitted (%d tasks)", name, batch_id, len(entry.tasks))


def describe(scheduled: Sequence[ScheduledBatch], now: datetime | None = None) -> list[dict[str, Any]]:
    """Each schedule with its next run: what ``coditect schedule --json`` prints."""
    now = now or datetime.now(UTC)
    return [
        {
            "name": entry.schedule.name,
            "cron": entry.schedule.cron,
            "next_run": entry.schedule.next_tick(now).isoformat().replace("+00:00", "Z"),
            "next_batch_id": tick_batch_id(entry.schedule.name, entry.schedule.next_tick(now)),
            "tasks": len(entry.tasks),
            "source": str(entry.schedule.batch) if entry.schedule.batch is not None else "inline",
        }
        for entry in scheduled
    ]
