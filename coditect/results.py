"""Reading results back: an ARQ result record (JSON) to an ``ExecutionResult``.

A record is what a worker wrote when a job ended (coditect's task job returns an ``ExecutionResult``
as a dict; any other outcome is an exception, written as ``{"__error__": ..., "message": ...}``), or
what a script wrote for a task that ended without running (cancelled, timed out, a failed
dependency). Both sides read them: the client for ``results``, the engine for delegated children.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from coditect.keys import split_job_id
from coditect.models import ExecutionResult, ExecutionStatus
from coditect.serialization import RemoteJobError, job_deserializer

__all__ = ["result_from_arq", "result_from_outcome"]


def result_from_arq(raw: bytes, job_id: str) -> ExecutionResult:
    """Turn an ARQ result record into an ExecutionResult (never raises: bad data is a failed result)."""
    try:
        data = job_deserializer(raw)
        value, tries = data["r"], max(0, int(data["t"] if data.get("t") is not None else 1))
    except (ValueError, KeyError, TypeError, OverflowError) as err:
        return ExecutionResult(
            task_id=_task_id(job_id), status=ExecutionStatus.FAILED, error=f"unreadable result: {err}"
        )
    return result_from_outcome(
        job_id,
        bool(data.get("s")),
        value,
        attempts=tries,
        started_ms=data.get("st"),
        finished_ms=data.get("ft"),
    )


def result_from_outcome(
    job_id: str,
    success: bool,
    value: Any,
    *,
    attempts: int,
    started_ms: Any,
    finished_ms: Any,
    agent: str = "",
) -> ExecutionResult:
    """The ExecutionResult of a job of coditect's task function that ended with ``value``: what it
    returned, or what ended it (the exception itself in the worker, or as a result record holds it).
    Never raises."""
    if success and isinstance(value, dict):
        try:
            return ExecutionResult.model_validate(value)
        except ValueError as err:
            return ExecutionResult(
                task_id=_task_id(job_id),
                status=ExecutionStatus.FAILED,
                error=f"unreadable result: {err}",
                attempts=attempts,
                agent=agent,
            )
    status = ExecutionStatus.FAILED
    if _timed_out(value):
        status = ExecutionStatus.TIMEOUT
    elif isinstance(value, asyncio.CancelledError):
        status = ExecutionStatus.CANCELLED
    return ExecutionResult(
        task_id=_task_id(job_id),
        status=status,
        error=_error_text(value),
        agent=agent,
        attempts=attempts,
        started_at=_from_ms(started_ms),
        finished_at=_from_ms(finished_ms),
        duration_s=_duration_s(started_ms, finished_ms),
    )


def _task_id(job_id: str) -> str:
    parts = split_job_id(job_id)
    return parts[1] if parts else job_id


def _timed_out(value: Any) -> bool:
    return isinstance(value, TimeoutError) or (
        isinstance(value, RemoteJobError) and value.error_type == "TimeoutError"
    )


def _duration_s(started: Any, finished: Any) -> float:
    if not isinstance(started, int | float) or not isinstance(finished, int | float) or not started:
        return 0.0
    seconds = (finished - started) / 1000
    return seconds if 0 <= seconds < float("inf") else 0.0


def _error_text(value: Any) -> str:
    if isinstance(value, asyncio.CancelledError):
        return f"cancelled: {value}" if str(value) else "cancelled"
    if _timed_out(value):
        message = value.message if isinstance(value, RemoteJobError) else str(value)
        return f"timed out: {message}" if message else "timed out (the job's time limit)"
    return str(value) if value is not None else "job failed without an error message"


def _from_ms(value: Any) -> datetime | None:
    if not isinstance(value, int | float) or not value:
        return None
    try:
        return datetime.fromtimestamp(value / 1000, UTC)
    except (ValueError, OverflowError, OSError):  # a time no worker wrote: out of range, NaN
        return None
