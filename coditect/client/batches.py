"""Batches in Redis, read and written by the client: submit, snapshot, results, cancel, listing.

A batch lives in Redis (see ``coditect/lua/batch.lua`` for its keys): its tasks and their dependency
graph, each task's state, counters and totals, and its event stream. Workers drive it: the script
that records a task's result also releases or cancels its dependants. Jobs are stored as ARQ stores
them (``arq:job:<id>``, the queue, ``arq:result:<id>``) with ids derived from the batch and the task
(``coditect:<batch>:<task>``), so a task enqueued twice runs once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from arq.connections import ArqRedis
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError

from coditect.backoff import REDIS_DOWN, Outage
from coditect.clock import now_ms
from coditect.errors import BackendUnavailableError, RedisOutageError
from coditect.held import Command, HeldConnections, Replies
from coditect.keys import (
    BATCH_KEY_PREFIX,
    BATCHES_KEY,
    EVENTS_KEY_PREFIX,
    JOB_EXPIRY_EXTRA_MS,
    RESULT_PREFIX,
    job_id_for,
    wake_channel,
)
from coditect.lua import script
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.redis_errors import short_error
from coditect.results import result_from_arq

__all__ = ["ATOMIC_TASKS", "CHUNK", "STATE_STATUS", "BatchStore", "BatchSummary", "Submitted"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

CHUNK = 500
# A batch up to this size is written by one script call: all of it, or (on an error) none of it.
ATOMIC_TASKS = 5_000
ATOMIC_BYTES = 16 * 1024 * 1024
WITHDRAW_REPLY_TIMEOUT_S = 10.0
# The one-letter states of a batch's `:state` hash (see coditect/lua/batch.lua).
STATE_STATUS = {
    "p": ExecutionStatus.PENDING,
    "q": ExecutionStatus.QUEUED,
    "r": ExecutionStatus.RUNNING,
    "s": ExecutionStatus.SUCCESS,
    "f": ExecutionStatus.FAILED,
    "t": ExecutionStatus.TIMEOUT,
    "c": ExecutionStatus.CANCELLED,
}
FINAL_STATES = frozenset("sftc")
_USAGE_FIELDS = ("in", "out", "cache_read", "cache_write")
_TOTAL_FIELDS = (*_USAGE_FIELDS, "cost", "unpriced")
_FINAL_COUNTS = ("success", "failed", "timeout", "cancelled")
_REPEATED_FIELDS = ("agent", "mode", "provider", "model", "worker")


@dataclass(frozen=True, slots=True)
class Submitted:
    """What ``submit`` did: ``created`` False when the batch existed already (nothing was written).
    ``then_replies``: the replies to the commands sent after it (``submit(then=...)``), to read or drop."""

    batch_id: str
    created: bool
    added: int
    last_event_id: str
    then_replies: Replies | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """A batch as its record in Redis says: counts per status, totals, and when it finished."""

    id: str
    name: str
    total: int
    counts: dict[str, int]
    created_at: datetime | None
    finished_at: datetime | None
    cancelled: str | None
    totals: dict[str, float]
    by_agent: dict[str, dict[str, float]] = field(default_factory=dict)
    by_model: dict[str, dict[str, float]] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(self.counts[status] for status in ("success", "failed", "timeout", "cancelled"))

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def duration_s(self) -> float | None:
        if self.created_at is None or self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.created_at).total_seconds())

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "created_at": _iso(self.created_at),
            "finished_at": _iso(self.finished_at),
            "total": self.total,
            "counts": self.counts,
            "cancelled": self.cancelled,
            "usage": {
                key: int(self.totals.get(key, 0)) for key in ("in", "out", "cache_read", "cache_write")
            },
            "cost_usd": round(self.totals.get("cost", 0.0), 9),
            "unpriced_tasks": int(self.totals.get("unpriced", 0)),
            "by_agent": self.by_agent,
            "by_model": self.by_model,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _from_ms(value: bytes | str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromtimestamp(int(float(value)) / 1000, UTC)


def summary_from(batch_id: str, raw: dict[bytes, bytes]) -> BatchSummary:
    """A ``BatchSummary`` from the batch's hash, as HGETALL returns it."""
    data = {key.decode(): value.decode() for key, value in raw.items()}
    total = int(data.get("total", 0))
    counts = {
        status: int(data.get(f"n_{status}", 0)) for status in ("success", "failed", "timeout", "cancelled")
    }
    running = int(data.get("n_running", 0))
    waiting_or_queued = total - running - sum(counts.values())
    counts = {"pending": 0, "queued": max(0, waiting_or_queued), "running": running, **counts}
    totals = {name: float(data.get(name, 0)) for name in _TOTAL_FIELDS}
    by_agent: dict[str, dict[str, float]] = {}
    by_model: dict[str, dict[str, float]] = {}
    for key, value in data.items():
        kind, _, rest = key.partition(":")
        if kind in ("agent", "model") and rest:
            name, _, total_name = rest.rpartition(":")
            target = by_agent if kind == "agent" else by_model
            # Token counts and unpriced tasks are counts (HINCRBY); only the cost is a float.
            target.setdefault(name, {})[total_name] = (
                float(value) if total_name == "cost" else int(float(value))
            )
    return BatchSummary(
        id=batch_id,
        name=data.get("name", ""),
        total=total,
        counts=counts,
        created_at=_from_ms(data.get("created")),
        finished_at=_from_ms(data.get("finished")),
        cancelled=data.get("cancelled"),
        totals=totals,
        by_agent=by_agent,
        by_model=by_model,
        fields=data,
    )


class BatchStore:
    """Reads and writes batches on one Redis."""

    def __init__(
        self, redis: ArqRedis, *, queue_name: str, keep_result_s: int, events_max_len: int = 100_000
    ) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.keep_result_s = keep_result_s
        self.events_max_len = events_max_len
        self.held = HeldConnections(redis.connection_pool)
        self._submit = redis.register_script(script("submit"))
        self._cancel = redis.register_script(script("cancel"))
        self._discard = redis.register_script(script("discard"))
        self._config = (
            wake_channel(queue_name),
            events_max_len,
            keep_result_s * 1000,
            max(keep_result_s * 1000, JOB_EXPIRY_EXTRA_MS),
        )

    async def close(self) -> None:
        """Give the connections it holds back to the pool (before the pool closes)."""
        await self.held.close()

    def _head(self) -> list[Any]:
        return [now_ms(), *self._config]

    # -- writing ------------------------------------------------------------------------------

    async def submit(
        self,
        batch_id: str,
        tasks: Sequence[AgentTask],
        *,
        fields: dict[str, str | int | float] | None = None,
        recreate: bool = False,
        atomic: bool = False,
        then: Sequence[Command] = (),
    ) -> Submitted:
        """Record the batch and enqueue the tasks without unmet dependencies; workers do the rest.

        ``tasks`` must be in dependency order (``coditect.client.graph.dependency_order``). A batch of
        up to ``ATOMIC_TASKS`` (and ``ATOMIC_BYTES``) is one script call, so it is written whole or not
        at all; ``atomic`` sends any batch in one call (a scheduled batch: each tick is all or nothing).
        A larger one is sent in chunks so that its first tasks start while the rest are sent; if a chunk
        fails, what was sent is withdrawn (``discard.lua``: queued tasks never start, running ones are
        aborted, the record goes) before the error is raised. ``created`` is False when the batch id
        exists already: then nothing is written. ``recreate`` writes a batch that Redis lost, over what
        is left of it. ``then``: commands sent in the same write as a batch that goes in one call, which
        Redis runs right after it (their replies are ``then_replies`` when the batch was created).
        """
        token = uuid.uuid4().hex  # this submission's mark on the batch: withdraw only our own
        flat: list[str | int | float] = ["total", len(tasks), "submission", token]
        for name, value in (fields or {}).items():
            flat += [name, value]
        meta = json.dumps(flat)
        one_call, rows = atomic, None
        if atomic or len(tasks) <= ATOMIC_TASKS:
            rows = [_row(task) for task in tasks]
            one_call = atomic or sum(len(row[1]) for row in rows) <= ATOMIC_BYTES
        # The commands after it wait for the whole batch: only a batch sent in one call takes them.
        after = then if one_call else ()
        # A batch sent in chunks has each chunk's rows made just before it is sent: the first tasks
        # start without waiting for the rest to be serialized, and only a chunk is held at a time.
        chunk = len(tasks) if one_call else CHUNK
        starts = range(0, max(len(tasks), 1), max(chunk, 1))
        added, last_event = 0, ""
        try:
            for start in starts:
                how = ("again" if recreate else "new") if start == 0 else "more"
                args: list[Any] = [*self._head(), batch_id, how, meta]
                part = (
                    rows[start : start + chunk]
                    if rows is not None
                    else map(_row, tasks[start : start + chunk])
                )
                for row in part:
                    args += row
                if after:
                    reply, replies = await self.held.run_then(self._submit, [self.queue_name], args, *after)
                else:
                    reply, replies = await self.held.run(self._submit, [self.queue_name], args), None
                status, count, event_id = reply
                if start == 0 and not int(status):
                    if replies is not None:
                        await replies.drop()
                    return Submitted(batch_id, created=False, added=0, last_event_id="")
                added += int(count)
                last_event = _text(event_id) or last_event
        except (Exception, asyncio.CancelledError) as err:
            if len(starts) > 1 and await self._withdraw(batch_id, token, err) and isinstance(err, REDIS_DOWN):
                # Sending it again would meet its aborted tasks finishing under the same job ids.
                raise BackendUnavailableError(
                    f"batch {batch_id}: the connection to Redis was lost while it was sent "
                    f"({short_error(err)}); it was withdrawn and its started tasks aborted: submit it again"
                ) from err
            raise
        return Submitted(batch_id, created=True, added=added, last_event_id=last_event, then_replies=replies)

    async def _withdraw(self, batch_id: str, token: str, err: BaseException) -> int:
        """Take back the chunks of a batch whose later chunk failed with ``err``; returns how many of
        its tasks had started (they are asked to abort). After a lost connection with none started, the
        caller may send the batch again."""
        outage = Outage()
        while True:
            try:
                async with asyncio.timeout(WITHDRAW_REPLY_TIMEOUT_S):
                    queued, running = await self._discard(
                        keys=[self.queue_name], args=[*self._head(), batch_id, token]
                    )
                break
            except REDIS_DOWN as failure:
                if isinstance(err, asyncio.CancelledError):
                    logger.error(
                        "batch %s: sent in part, and not withdrawn: %s", batch_id, short_error(failure)
                    )
                    return 0  # the caller is being cancelled: no waiting out an outage
                try:
                    await outage.backoff(failure)
                except RedisOutageError as outlasted:
                    raise _not_withdrawn(batch_id, outlasted) from err
            except RedisError as failure:
                raise _not_withdrawn(batch_id, failure) from err
        if int(queued) < 0:
            return 0  # not this submission's: nothing of it was written
        logger.warning(
            "batch %s: not enqueued whole (%s); withdrawn: %d queued task(s) removed, %d running aborted",
            batch_id, short_error(err), int(queued), int(running),
        )  # fmt: skip
        return int(running)

    async def cancel(
        self, batch_id: str, *, reason: str, as_timeout: bool = False
    ) -> tuple[int, int, int] | None:
        """End the batch's unfinished tasks: queued and waiting ones at once, running ones aborted.

        Returns (queued ended, waiting ended, running asked to abort), or None for an unknown batch.
        """
        code = "t" if as_timeout else "c"
        counts = [0, 0, 0]
        state_key = BATCH_KEY_PREFIX + batch_id + ":state"
        cursor: int = 0
        marked = False
        while True:
            cursor, chunk = await self.redis.hscan(state_key, cursor, count=CHUNK)
            open_ids = [task.decode() for task, state in chunk.items() if state.decode() not in FINAL_STATES]
            if open_ids or not marked:
                args = [*self._head(), "", batch_id, code, reason, *open_ids]
                queued, waiting, aborted = await self._cancel(keys=[self.queue_name], args=args)
                if int(queued) < 0:
                    return None
                marked = True
                counts = [counts[0] + int(queued), counts[1] + int(waiting), counts[2] + int(aborted)]
            if int(cursor) == 0:
                return counts[0], counts[1], counts[2]

    # -- reading ------------------------------------------------------------------------------

    async def summary(self, batch_id: str) -> BatchSummary | None:
        (flat,) = await self.held.call(("HGETALL", BATCH_KEY_PREFIX + batch_id))
        if not flat:
            return None
        pairs = iter(flat)
        return summary_from(batch_id, dict(zip(pairs, pairs, strict=True)))

    async def exists(self, batch_id: str) -> bool:
        """Whether the batch's record is in Redis (it goes when it expires, or when Redis loses its data)."""
        return bool(await self.redis.exists(BATCH_KEY_PREFIX + batch_id))

    async def snapshot(self, batch_id: str) -> tuple[BatchSummary | None, str]:
        """The batch's summary and the id of its newest event, read together (follow events after it)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(BATCH_KEY_PREFIX + batch_id)
            pipe.xrevrange(EVENTS_KEY_PREFIX + batch_id, count=1)
            raw, newest = await pipe.execute()
        last = newest[0][0].decode() if newest else "0-0"
        return (summary_from(batch_id, raw) if raw else None), last

    async def task_ids(self, batch_id: str) -> list[str]:
        """The batch's task ids in submission order (delegated children after their batch)."""
        order = await self.redis.lrange(BATCH_KEY_PREFIX + batch_id + ":order", 0, -1)  # type: ignore[misc]
        return [task.decode() for task in order]

    async def states(self, batch_id: str) -> dict[str, ExecutionStatus]:
        raw = await self.redis.hgetall(BATCH_KEY_PREFIX + batch_id + ":state")  # type: ignore[misc]
        return {
            task.decode(): STATE_STATUS.get(state.decode(), ExecutionStatus.PENDING)
            for task, state in raw.items()
        }

    async def fetch_results(self, batch_id: str, task_ids: Sequence[str]) -> dict[str, ExecutionResult]:
        """Results of whichever of ``task_ids`` have one, in a round trip per ``CHUNK``."""
        found: dict[str, ExecutionResult] = {}
        for chunk in _chunks(task_ids):
            (values,) = await self.held.call(("MGET", *result_keys(batch_id, chunk)))
            found.update(read_results(batch_id, chunk, values))
        return found

    async def ended_task_ids(self, batch_id: str) -> AsyncIterator[list[str]]:
        """The ids of the batch's tasks in a final state, a ``CHUNK`` or so at a time (HSCAN: an id
        may come twice; none is held for the whole batch)."""
        cursor: int = 0
        while True:
            cursor, chunk = await self.redis.hscan(
                BATCH_KEY_PREFIX + batch_id + ":state", cursor, count=CHUNK
            )
            yield [task.decode() for task, state in chunk.items() if state.decode() in FINAL_STATES]
            if int(cursor) == 0:
                return

    async def results(self, batch_id: str) -> list[ExecutionResult] | None:
        """Every task of the batch, in order: its result, or its current status. None if unknown."""
        if not await self.exists(batch_id):
            return None
        order = await self.task_ids(batch_id)
        found = await self.fetch_results(batch_id, order)
        states = await self.states(batch_id) if len(found) < len(order) else {}
        tasks = await self._agents(batch_id, [task for task in order if task not in found])
        return [
            found.get(task_id)
            or ExecutionResult(
                task_id=task_id,
                status=states.get(task_id, ExecutionStatus.PENDING),
                agent=tasks.get(task_id, ""),
                attempts=0,
            )
            for task_id in order
        ]

    async def _agents(self, batch_id: str, task_ids: Sequence[str]) -> dict[str, str]:
        if not task_ids:
            return {}
        raw = await self.redis.hmget(BATCH_KEY_PREFIX + batch_id + ":tasks", list(task_ids))  # type: ignore[misc]
        return {
            task_id: json.loads(value).get("agent", "")
            for task_id, value in zip(task_ids, raw, strict=True)
            if value is not None
        }

    async def tasks(self, batch_id: str) -> dict[str, AgentTask]:
        raw = await self.redis.hgetall(BATCH_KEY_PREFIX + batch_id + ":tasks")  # type: ignore[misc]
        return {task.decode(): AgentTask.model_validate_json(value) for task, value in raw.items()}

    async def recent(self, limit: int = 50) -> list[BatchSummary]:
        """The most recent batches still recorded, newest first."""
        ids = [batch.decode() for batch in await self.redis.zrevrange(BATCHES_KEY, 0, limit * 2)]
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in ids:
                pipe.hgetall(BATCH_KEY_PREFIX + batch_id)
            metas = await pipe.execute()
        gone = [batch_id for batch_id, raw in zip(ids, metas, strict=True) if not raw]
        if gone:
            await self.redis.zrem(BATCHES_KEY, *gone)
        summaries = [summary_from(batch_id, raw) for batch_id, raw in zip(ids, metas, strict=True) if raw]
        return summaries[:limit]


def result_keys(batch_id: str, task_ids: Sequence[str]) -> list[str]:
    """The keys of these tasks' result records."""
    return [RESULT_PREFIX + job_id_for(batch_id, task_id) for task_id in task_ids]


def read_results(
    batch_id: str, task_ids: Sequence[str], values: Sequence[bytes | None]
) -> dict[str, ExecutionResult]:
    """The results among ``values`` (an MGET of ``result_keys(batch_id, task_ids)``), by task id."""
    return {
        task_id: _shared_strings(_result(batch_id, task_id, raw))
        for task_id, raw in zip(task_ids, values, strict=True)
        if raw is not None
    }


class _Returned(BaseModel):
    """What a record of a task job that returned holds of its ExecutionResult."""

    model_config = ConfigDict(extra="ignore")

    s: Literal[True]
    r: ExecutionResult


def _result(batch_id: str, task_id: str, raw: bytes) -> ExecutionResult:
    """The result in a record: pydantic reads a returned result straight from the JSON (~6 us, not the
    ~17 of a JSON tree and then a model); anything else (an error, a record that is not JSON) is
    ``result_from_arq``'s to read."""
    try:
        return _Returned.model_validate_json(raw).r
    except ValueError:
        return result_from_arq(raw, job_id_for(batch_id, task_id))


def _shared_strings(result: ExecutionResult) -> ExecutionResult:
    """The result with one copy of each string that repeats across a batch's results (agent, mode,
    provider, model, worker): ~280 bytes less per result held."""
    fields = result.__dict__
    for name in _REPEATED_FIELDS:
        value = fields[name]
        if type(value) is str:
            fields[name] = sys.intern(value)
    return result


def _row(task: AgentTask) -> tuple[str, str, str]:
    """A task as the submit script takes it: id, JSON, dependency ids separated by spaces."""
    return task.id, task.model_dump_json(), " ".join(task.depends_on)


def _not_withdrawn(batch_id: str, failure: BaseException) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"batch {batch_id} was sent in part and could not be withdrawn ({short_error(failure)}): "
        f"cancel it with 'coditect cancel {batch_id}'"
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _chunks(items: Sequence[_T]) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
