"""Batches in Redis: pipelined idempotent enqueue, results read in bulk, cancellation.

Jobs are stored exactly as ARQ stores them (``arq:job:<id>``, the queue ZSET, ``arq:result:<id>``),
so ARQ workers run them and plain ARQ clients can read them. A job id is derived from the batch and
the task (``coditect:<batch>:<task>``): enqueueing the same task of the same batch twice runs it once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from arq.connections import ArqRedis
from arq.jobs import serialize_job
from pydantic import BaseModel, Field

from coditect.keys import (
    ABORT_SET,
    BATCH_KEY_PREFIX,
    IN_PROGRESS_PREFIX,
    JOB_EXPIRY_EXTRA_MS,
    JOB_NAME,
    JOB_PREFIX,
    RESULT_PREFIX,
    done_key,
    job_id_for,
    split_job_id,
    wake_channel,
)
from coditect.lua import script
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.serialization import RemoteJobError, job_deserializer, job_serializer

__all__ = ["BatchRecord", "BatchStore", "job_id_for", "result_from_arq"]

_T = TypeVar("_T")

CHUNK = 500


def _now_ms() -> int:
    return int(time.time() * 1000)


class BatchRecord(BaseModel):
    """What is kept of a batch so that ``status`` and ``results`` can find it later."""

    id: str
    name: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    task_ids: list[str]


class BatchStore:
    """Reads and writes batches and their jobs on one Redis (ARQ's key layout)."""

    def __init__(self, redis: ArqRedis, *, queue_name: str, keep_result_s: int) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.keep_result_s = keep_result_s
        self._enqueue = redis.register_script(script("enqueue"))
        self._cancel = redis.register_script(script("cancel"))

    async def save(self, record: BatchRecord) -> None:
        await self.redis.set(BATCH_KEY_PREFIX + record.id, record.model_dump_json(), ex=self.keep_result_s)

    async def exists(self, batch_id: str) -> bool:
        """Whether the batch's record is still in Redis (it goes when Redis loses its data)."""
        return bool(await self.redis.exists(BATCH_KEY_PREFIX + batch_id))

    async def load(self, batch_id: str) -> BatchRecord | None:
        raw = await self.redis.get(BATCH_KEY_PREFIX + batch_id)
        return None if raw is None else BatchRecord.model_validate_json(raw)

    async def enqueue(
        self, batch_id: str, tasks: Sequence[AgentTask], *, record: BatchRecord | None = None
    ) -> int:
        """Enqueue ``tasks`` (and save ``record``) in one pipelined round trip; returns how many were new."""
        now = _now_ms()
        expiry_ms = max(self.keep_result_s * 1000, JOB_EXPIRY_EXTRA_MS)
        async with self.redis.pipeline(transaction=False) as pipe:
            if record is not None:
                pipe.set(BATCH_KEY_PREFIX + record.id, record.model_dump_json(), ex=self.keep_result_s)
            for chunk in _chunks(tasks):
                args: list[Any] = [now, expiry_ms, wake_channel(self.queue_name)]
                for task in chunk:
                    payload = serialize_job(
                        JOB_NAME, (task.model_dump(mode="json"),), {}, None, now, serializer=job_serializer
                    )
                    args += [job_id_for(batch_id, task.id), payload]
                await self._enqueue(keys=[self.queue_name], args=args, client=pipe)
            replies = await pipe.execute()
        return sum(replies[1:] if record is not None else replies)

    async def fetch_results(self, job_ids: Sequence[str]) -> dict[str, ExecutionResult]:
        """Results of whichever of ``job_ids`` have finished, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for chunk in _chunks(job_ids):
                pipe.mget([RESULT_PREFIX + job_id for job_id in chunk])
            replies = await pipe.execute()
        found: dict[str, ExecutionResult] = {}
        values = (value for reply in replies for value in reply)
        for job_id, raw in zip(job_ids, values, strict=True):
            if raw is not None:
                found[job_id] = result_from_arq(raw, job_id)
        return found

    async def wait_done(self, batch_id: str, timeout_s: float, *, expected: int = CHUNK) -> list[str]:
        """Block up to ``timeout_s`` until workers report finished jobs of the batch; their job ids.

        ``expected`` is how many reports can still come: with one, a single blocking pop suffices.
        """
        key = done_key(batch_id)
        # BLPOP takes fractional seconds since Redis 6; redis-py's hint says int.
        first = await self.redis.blpop([key], timeout=max(timeout_s, 0.001))  # type: ignore[arg-type,misc]
        if first is None:
            return []
        rest = await self.redis.lpop(key, min(expected, CHUNK)) if expected > 1 else []  # type: ignore[misc]
        rest = rest or []
        return [first[1].decode(), *(job_id.decode() for job_id in rest)]

    async def missing(self, job_ids: Sequence[str]) -> list[str]:
        """Those of ``job_ids`` whose job is not in Redis any more (e.g. Redis lost its data)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(JOB_PREFIX + job_id)
            flags = await pipe.execute()
        return [job_id for job_id, present in zip(job_ids, flags, strict=True) if not present]

    async def count_running(self, job_ids: Sequence[str]) -> int:
        """How many of ``job_ids`` a worker holds right now."""
        if not job_ids:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for chunk in _chunks(job_ids):
                pipe.exists(*(IN_PROGRESS_PREFIX + job_id for job_id in chunk))
            counts = await pipe.execute()
        return int(sum(counts))

    async def states(self, job_ids: Sequence[str]) -> list[ExecutionStatus]:
        """Queued, running or pending (not in Redis) for each unfinished job, in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(IN_PROGRESS_PREFIX + job_id)
                pipe.exists(JOB_PREFIX + job_id)
            flags = await pipe.execute()
        states = []
        for running, queued in zip(flags[::2], flags[1::2], strict=True):
            if running:
                states.append(ExecutionStatus.RUNNING)
            elif queued:
                states.append(ExecutionStatus.QUEUED)
            else:
                states.append(ExecutionStatus.PENDING)
        return states

    async def cancel(self, job_ids: Sequence[str], reason: str) -> tuple[int, int]:
        """Dequeue the queued jobs (they never start) and abort the running ones."""
        now = _now_ms()
        dequeued = aborted = 0
        for chunk in _chunks(job_ids):
            args: list[Any] = [now, self.keep_result_s * 1000]
            for job_id in chunk:
                batch = split_job_id(job_id)
                notify = done_key(batch[0]) if batch else ""
                args += [job_id, _cancelled_payload(job_id, self.queue_name, reason, now), notify]
            done, stopped = await self._cancel(keys=[self.queue_name], args=args)
            dequeued, aborted = dequeued + int(done), aborted + int(stopped)
        return dequeued, aborted

    async def pending_aborts(self) -> int:
        return int(await self.redis.zcard(ABORT_SET))


def result_from_arq(raw: bytes, job_id: str) -> ExecutionResult:
    """Turn an ARQ result record (written by a worker, or by ``cancel``) into an ExecutionResult."""
    parts = split_job_id(job_id)
    task_id = parts[1] if parts else job_id
    try:
        data = job_deserializer(raw)
        value, tries = data["r"], int(data["t"] if data.get("t") is not None else 1)
    except (ValueError, KeyError, TypeError) as err:
        return ExecutionResult(
            task_id=task_id, status=ExecutionStatus.FAILED, error=f"unreadable result: {err}"
        )
    if data.get("s") and isinstance(value, dict):
        try:
            return ExecutionResult.model_validate(value)
        except ValueError as err:
            return ExecutionResult(
                task_id=task_id,
                status=ExecutionStatus.FAILED,
                error=f"unreadable result: {err}",
                attempts=tries,
            )
    status = ExecutionStatus.FAILED
    if isinstance(value, RemoteJobError) and value.error_type == "TimeoutError":
        status = ExecutionStatus.TIMEOUT
    elif isinstance(value, asyncio.CancelledError):
        status = ExecutionStatus.CANCELLED
    started, finished = data.get("st"), data.get("ft")
    return ExecutionResult(
        task_id=task_id,
        status=status,
        error=_error_text(value),
        attempts=tries,
        started_at=_from_ms(started),
        finished_at=_from_ms(finished),
        duration_s=max(0.0, (finished - started) / 1000) if started and finished else 0.0,
    )


def _error_text(value: Any) -> str:
    if isinstance(value, asyncio.CancelledError):
        return f"CancelledError: {value}" if str(value) else "CancelledError"
    return str(value) if value is not None else "job failed without an error message"


def _from_ms(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, UTC) if isinstance(value, int | float) and value else None


def _cancelled_payload(job_id: str, queue_name: str, reason: str, now_ms: int) -> bytes:
    record = {
        "t": 0, "f": JOB_NAME, "a": [], "k": {}, "et": now_ms, "s": False,
        "r": RemoteJobError("CancelledError", reason), "st": now_ms, "ft": now_ms, "q": queue_name,
        "id": job_id,
    }  # fmt: skip
    return job_serializer(record)


def _chunks(items: Sequence[_T]) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
