"""The JSON serializer pair for ARQ jobs and results. Never pickle.

ARQ stores a failed job's exception object as its result; JSON cannot hold one, so an exception is
written as ``{"__error__": <type name>, "message": <text>}`` and read back as ``RemoteJobError``
(or as ``asyncio.CancelledError`` for an aborted job, which is what ARQ's ``Job.abort`` looks for).
No class is ever looked up by name, so a payload cannot make the reader run code.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

__all__ = ["JobPayload", "RemoteJobError", "UnreadableJob", "job_deserializer", "job_serializer", "read_job"]

_PICKLE_PROTOCOL_MARK = 0x80
_MAX_ERROR_CHARS = 4000


class RemoteJobError(Exception):
    """An exception raised in a worker, as read back from its JSON result."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}" if message else error_type)
        self.error_type = error_type
        self.message = message


def _encode(value: Any) -> Any:
    if isinstance(value, RemoteJobError):
        return {"__error__": value.error_type, "message": value.message}
    if isinstance(value, asyncio.CancelledError):
        return {"__error__": "CancelledError", "message": str(value)}
    if isinstance(value, BaseException):
        return {"__error__": type(value).__name__, "message": str(value)[:_MAX_ERROR_CHARS]}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _decode(obj: dict[str, Any]) -> Any:
    if obj.keys() == {"__error__", "message"}:
        if obj["__error__"] == "CancelledError":
            # ARQ's Job.abort() and Job.result() recognise an aborted job by this exception type.
            return asyncio.CancelledError(str(obj["message"]))
        return RemoteJobError(str(obj["__error__"]), str(obj["message"]))
    return obj


# One encoder and one decoder for the process: json.dumps/loads with hooks build new ones per call.
_ENCODER = json.JSONEncoder(default=_encode, separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder(object_hook=_decode)


def job_serializer(obj: Any) -> bytes:
    """Serialize a job or result dict to compact UTF-8 JSON."""
    return _ENCODER.encode(obj).encode()


def job_deserializer(data: bytes) -> Any:
    """Read JSON written by ``job_serializer``; refuse anything else (a pickle in particular)."""
    if data[:1] and data[0] == _PICKLE_PROTOCOL_MARK:
        raise ValueError("refusing a pickle payload: coditect jobs and results are JSON")
    return _DECODER.decode(data.decode() if isinstance(data, bytes | bytearray) else data)


class UnreadableJob(ValueError):
    """A job payload that is not a job coditect can run; the message says why, in a few words."""


@dataclass(frozen=True, slots=True)
class JobPayload:
    """The fields of an ARQ job record: function name, args, kwargs, the enqueuer's try, enqueue time."""

    function: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    enqueue_try: int | None
    enqueued_ms: int


def read_job(data: bytes, deserializer: Callable[[bytes], Any] = job_deserializer) -> JobPayload:
    """Read an ARQ job record; ``UnreadableJob`` with a short reason for anything that is not one.

    The queue is shared with whoever can write to Redis, so the payload is checked field by field
    instead of trusting its shape (a JSON list or number is valid JSON, and no job).
    """
    try:
        job = deserializer(data)
    except UnicodeDecodeError:
        raise UnreadableJob("job payload is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise UnreadableJob(f"job payload is not JSON ({err.msg} at character {err.pos})") from None
    except ValueError as err:  # the pickle refusal, or a custom deserializer's own words
        raise UnreadableJob(str(err)[:200] or "job payload cannot be read") from None
    if not isinstance(job, dict):
        raise UnreadableJob("job payload is not a JSON object")
    function = job.get("f")
    if not isinstance(function, str) or not function:
        raise UnreadableJob("job payload has no function name")
    args, kwargs = job.get("a"), job.get("k")
    if not isinstance(args, list):
        raise UnreadableJob("job payload has no argument list")
    if not isinstance(kwargs, dict):
        raise UnreadableJob("job payload has no keyword-argument object")
    for name in ("t", "et"):  # ARQ's reader needs them too
        if name not in job:
            raise UnreadableJob(f"job payload has no {name!r} field")
    enqueue_try, enqueued = job["t"], job["et"] or 0
    if not isinstance(enqueued, int | float) or isinstance(enqueued, bool) or not math.isfinite(enqueued):
        raise UnreadableJob("job payload's enqueue time is not a number")
    return JobPayload(
        function=function,
        args=tuple(args),
        kwargs=kwargs,
        enqueue_try=enqueue_try
        if isinstance(enqueue_try, int) and not isinstance(enqueue_try, bool)
        else None,
        enqueued_ms=int(enqueued),
    )
