"""Scheduled batches, for the batches page: the seam to the schedule module, when there is one.

The dashboard shows the section only when ``CODITECT_SCHEDULE_FILE`` is set and a schedule module
(``coditect.engine.schedule``) can be imported; it asks that module for:

- ``load_schedule_file(path) -> Sequence[entry]``, each entry with ``name`` and ``cron``;
- the next run of an entry: ``entry.next_run(after)`` or ``module.next_run(entry, after)``,
  a ``datetime`` (or None when it never runs again).

This is the whole contract; the rest of the dashboard does not know schedules.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any

from coditect.settings import Settings

__all__ = ["SCHEDULE_MODULE", "ScheduledBatch", "Schedules", "read_schedules"]

logger = logging.getLogger(__name__)

SCHEDULE_MODULE = "coditect.engine.schedule"


@dataclass(frozen=True, slots=True)
class ScheduledBatch:
    name: str
    cron: str
    next_run: datetime | None


@dataclass(frozen=True, slots=True)
class Schedules:
    """What the batches page shows: the entries, or why they could not be read."""

    entries: list[ScheduledBatch]
    error: str | None = None


def _module() -> ModuleType | None:
    try:
        return importlib.import_module(SCHEDULE_MODULE)
    except ImportError:
        return None


def _next_run(module: ModuleType, entry: Any, now: datetime) -> datetime | None:
    method = getattr(entry, "next_run", None)
    value = method(now) if callable(method) else module.next_run(entry, now)
    return value if isinstance(value, datetime) else None


def read_schedules(settings: Settings, now: datetime) -> Schedules | None:
    """The scheduled batches and their next runs; None when there is no schedule to show."""
    if settings.schedule_file is None:
        return None
    module = _module()
    if module is None or not hasattr(module, "load_schedule_file"):
        return None
    try:
        entries = [
            ScheduledBatch(str(entry.name), str(entry.cron), _next_run(module, entry, now))
            for entry in module.load_schedule_file(settings.schedule_file)
        ]
    except Exception as err:  # another team's module: whatever it raises, the page still renders
        logger.warning("schedule file %s: %s", settings.schedule_file, err)
        return Schedules([], error=f"{type(err).__name__}: {err}")
    return Schedules(entries)
