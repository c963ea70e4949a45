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

__all__ = ["result_from_arq"]


def result_from_arq(raw: bytes, job_id: str) -> ExecutionResult:
    """Turn an ARQ result record into an ExecutionResult (never raises: bad data is a failed result)."""
    parts = split_job_id(job_id)
    task_id = parts[1] if parts else job_id
    try:
        data = job_deserializer(raw)
        value, tries = data["r"], max(0, int(data["t"] if data.get("t") is not None else 1))
    except (ValueError, KeyError, TypeError, OverflowError) as err:
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
        duration_s=_duration_s(started, finished),
    )


def _duration_s(started: Any, finished: Any) -> float:
    if not isinstance(started, int | float) or not isinstance(finished, int | float) or not started:
        return 0.0
    seconds = (finished - started) / 1000
    return seconds if 0 <= seconds < float("inf") else 0.0


def _error_text(value: Any) -> str:
    if isinstance(value, asyncio.CancelledError):
        return f"cancelled: {value}" if str(value) else "cancelled"
    if isinstance(value, RemoteJobError) and value.error_type == "TimeoutError":
        return f"timed out: {value.message}" if value.message else "timed out (the job's time limit)"
    return str(value) if value is not None else "job failed without an error message"


def _from_ms(value: Any) -> datetime | None:
    if not isinstance(value, int | float) or not value:
        return None
    try:
        return datetime.fromtimestamp(value / 1000, UTC)
    except (ValueError, OverflowError, OSError):  # a time no worker wrote: out of range, NaN
        return None
