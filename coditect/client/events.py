"""Lifecycle events, read from Redis Streams.

Every state change of a batch is appended, by the script that makes the change, to the batch's
stream (``coditect:events:<batch>``) and to the stream of all batches (``coditect:events``), each
capped at ``CODITECT_EVENTS_MAX_LEN`` entries. Types: ``batch.submitted``, ``task.queued``,
``task.started``, ``task.retrying``, ``task.succeeded``, ``task.failed``, ``task.timeout``,
``task.cancelled``, ``batch.finished``. An event never holds a secret, a prompt or an output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis

from coditect.keys import BATCH_END_SUFFIX, EVENTS_KEY, EVENTS_KEY_PREFIX

__all__ = [
    "FINAL_EVENTS",
    "READ_COUNT",
    "Event",
    "EventsRead",
    "events_from_reply",
    "follow_events",
    "read_events",
    "scan_events",
    "stream_key",
]

FINAL_EVENTS = frozenset({"task.succeeded", "task.failed", "task.timeout", "task.cancelled"})
READ_COUNT = 1000
_INTS = frozenset(
    {
        "attempt",
        "in",
        "out",
        "cache_read",
        "cache_write",
        "total",
        "success",
        "failed",
        "timeout",
        "cancelled",
    }
)
_FLOATS = frozenset({"duration", "delay", "cost"})
_FINAL_TYPES = frozenset(kind.encode() for kind in FINAL_EVENTS)
_FINISHED_COUNTS = (b"success", b"failed", b"timeout", b"cancelled")


def stream_key(batch_id: str | None) -> str:
    return EVENTS_KEY if batch_id is None else EVENTS_KEY_PREFIX + batch_id


def end_stream_key(batch_id: str) -> str:
    """The stream that holds a batch's ``batch.finished`` event alone, once it has finished."""
    return EVENTS_KEY_PREFIX + batch_id + BATCH_END_SUFFIX


@dataclass(frozen=True, slots=True)
class Event:
    """One state change. ``data`` holds the type's other fields (usage, cost, error, counts...)."""

    id: str
    type: str
    batch_id: str
    task_id: str | None = None
    attempt: int | None = None
    worker: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def at(self) -> datetime:
        """When it happened: the stream id's milliseconds (Redis's clock)."""
        return datetime.fromtimestamp(int(self.id.partition("-")[0]) / 1000, UTC)

    @property
    def is_final(self) -> bool:
        return self.type in FINAL_EVENTS

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "batch_id": self.batch_id,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "worker": self.worker,
            "at": self.at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            **self.data,
        }

    @classmethod
    def from_entry(cls, entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
        values = {key.decode(): value.decode() for key, value in fields.items()}
        data: dict[str, Any] = {}
        for key, value in values.items():
            if key in ("type", "batch", "task", "attempt", "worker"):
                continue
            if key in _INTS:
                data[key] = int(value)
            elif key in _FLOATS:
                data[key] = float(value) if value else None
            else:
                data[key] = value
        attempt = values.get("attempt")
        return cls(
            id=entry_id.decode(),
            type=values.get("type", "?"),
            batch_id=values.get("batch", ""),
            task_id=values.get("task"),
            attempt=int(attempt) if attempt not in (None, "") else None,
            worker=values.get("worker"),
            data=data,
        )


async def read_events(
    redis: ArqRedis, batch_id: str | None, since: str, *, block_ms: int | None = None, count: int = READ_COUNT
) -> list[Event]:
    """Events after ``since`` (a stream id; ``0-0`` for all), waiting up to ``block_ms`` for one."""
    key = stream_key(batch_id)
    return events_from_reply(await redis.xread({key: since}, count=count, block=block_ms))


def events_from_reply(reply: Any) -> list[Event]:
    """The events of an XREAD reply for one stream."""
    if not reply:
        return []
    ((_, entries),) = reply
    return [Event.from_entry(entry_id, fields) for entry_id, fields in entries]


@dataclass(frozen=True, slots=True)
class EventsRead:
    """What a waiter needs of a read of a batch's events: the last id (empty when there was none),
    the tasks whose final event was read, and how many tasks ended when ``batch.finished`` was read."""

    last: str = ""
    final_tasks: list[str] = field(default_factory=list)
    ended: int | None = None


def scan_events(reply: Any) -> EventsRead:
    """An XREAD reply for one stream, as Redis sent it (no redis-py callback), scanned for what a
    waiter needs: no ``Event`` is built for each of thousands of events."""
    if not reply:
        return EventsRead()
    ((_, entries),) = reply
    final_tasks: list[str] = []
    ended = None
    for _, flat in entries:
        pairs = iter(flat or ())
        fields = dict(zip(pairs, pairs, strict=True))
        kind = fields.get(b"type")
        if kind in _FINAL_TYPES:
            task = fields.get(b"task")
            if task:
                final_tasks.append(task.decode())
        elif kind == b"batch.finished":
            ended = sum(int(fields.get(status, 0)) for status in _FINISHED_COUNTS)
    return EventsRead(entries[-1][0].decode(), final_tasks, ended)


async def follow_events(
    redis: ArqRedis, batch_id: str | None, since: str = "0-0", *, block_ms: int = 1000
) -> AsyncIterator[Event]:
    """Every event after ``since``, as it comes, forever."""
    last = since
    while True:
        for event in await read_events(redis, batch_id, last, block_ms=block_ms):
            last = event.id
            yield event
