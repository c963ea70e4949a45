"""Read-only Redis look-ups the dashboard needs beyond ``BatchStore``: delegation, one task, one
task's events, the queue's depth. Nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis

from coditect.client.batches import STATE_STATUS
from coditect.client.events import Event, read_events, stream_key
from coditect.keys import batch_key, leases_key
from coditect.models import AgentTask

__all__ = [
    "Parent",
    "QueueDepth",
    "newest_event_id",
    "queue_depth",
    "read_parent",
    "read_parents",
    "read_state",
    "read_task",
    "task_events",
]

# A task's timeline is looked for in at most this many of its batch's events.
MAX_EVENTS_SCANNED = 100_000
PAGE = 1000


@dataclass(frozen=True, slots=True)
class Parent:
    """Who delegated a task, and how deep the delegation goes (1: a child of a submitted task)."""

    task_id: str
    depth: int


async def read_parents(redis: ArqRedis, batch_id: str) -> dict[str, Parent]:
    """Delegated children of a batch: child id -> its parent."""
    raw = await redis.hgetall(batch_key(batch_id, "parents"))  # type: ignore[misc]
    found = {}
    for child, value in raw.items():
        parent, _, depth = value.decode().partition(" ")
        found[child.decode()] = Parent(parent, int(depth) if depth.isdigit() else 1)
    return found


async def read_parent(redis: ArqRedis, batch_id: str, task_id: str) -> Parent | None:
    """Who delegated ``task_id``; None for a task of the batch as submitted."""
    raw = await redis.hget(batch_key(batch_id, "parents"), task_id)  # type: ignore[misc]
    if raw is None:
        return None
    parent, _, depth = raw.decode().partition(" ")
    return Parent(parent, int(depth) if depth.isdigit() else 1)


async def read_task(redis: ArqRedis, batch_id: str, task_id: str) -> AgentTask | None:
    raw = await redis.hget(batch_key(batch_id, "tasks"), task_id)  # type: ignore[misc]
    return AgentTask.model_validate_json(raw) if raw is not None else None


async def read_state(redis: ArqRedis, batch_id: str, task_id: str) -> str:
    """A task's status from its batch's state (``pending`` when it has none yet)."""
    raw = await redis.hget(batch_key(batch_id, "state"), task_id)  # type: ignore[misc]
    return STATE_STATUS[raw.decode() if raw is not None else "p"].value


async def task_events(redis: ArqRedis, batch_id: str, task_id: str) -> list[Event]:
    """The events of one task, oldest first (from the batch's stream, as far as it is kept)."""
    found: list[Event] = []
    last, scanned = "0-0", 0
    while scanned < MAX_EVENTS_SCANNED:
        events = await read_events(redis, batch_id, last, count=PAGE)
        found += [event for event in events if event.task_id == task_id]
        if len(events) < PAGE:
            break
        scanned += len(events)
        last = events[-1].id
    return found


async def newest_event_id(redis: ArqRedis, batch_id: str | None) -> str:
    """The id of the newest event of a batch (or of all batches); ``0-0`` when there is none."""
    newest = await redis.xrevrange(stream_key(batch_id), count=1)
    return str(newest[0][0].decode()) if newest else "0-0"


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """The queue's jobs: due now, held by a worker (running), and due later (retries, rate limits)."""

    due: int
    running: int
    later: int

    @property
    def total(self) -> int:
        return self.due + self.running + self.later


async def queue_depth(redis: ArqRedis, queue_name: str, now_ms: int) -> QueueDepth:
    # A claimed job stays in the queue, its score moved to its lease's end (see coditect.keys).
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zcard(queue_name)
        pipe.zcount(queue_name, "-inf", now_ms)
        pipe.zcard(leases_key(queue_name))
        total, due, running = await pipe.execute()
    return QueueDepth(int(due), int(running), max(0, int(total) - int(due) - int(running)))
