"""The JSON serializer pair: what it writes, what it reads back, and the pickle it refuses."""

from __future__ import annotations

import asyncio
import json
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from arq.jobs import deserialize_job, deserialize_result, serialize_job, serialize_result
from pydantic import BaseModel

from coditect.models import ExecutionResult, ExecutionStatus, TokenUsage
from coditect.serialization import (
    JobPayload,
    RemoteJobError,
    UnreadableJob,
    job_deserializer,
    job_serializer,
    read_job,
)


class _CreatesFile:
    """Unpickling this opens (so creates) ``path`` for writing: a stand-in for any pickle exploit."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


class _Point(BaseModel):
    x: int
    tags: list[str] = []


def test_job_dict_round_trips_through_arq_job_format() -> None:
    task = {"id": "t1", "title": "Write docs", "metadata": {"n": 1, "ok": True, "none": None}}

    payload = serialize_job(
        "execute_task", (task,), {"agent": "writer"}, 2, 1_700_000_000_000, serializer=job_serializer
    )
    job = deserialize_job(payload, deserializer=job_deserializer)

    assert json.loads(payload) == {
        "t": 2, "f": "execute_task", "a": [task], "k": {"agent": "writer"}, "et": 1_700_000_000_000,
    }  # fmt: skip
    assert (job.function, job.args, job.kwargs, job.job_try) == (
        "execute_task",
        [task],
        {"agent": "writer"},
        2,
    )


def test_result_dict_round_trips_through_arq_result_format() -> None:
    value = {"task_id": "t1", "status": "success", "output": "héllo ✓", "attempts": 1}

    payload = serialize_result(
        "execute_task",
        (),
        {},
        1,
        1000,
        True,
        value,
        2000,
        3000,
        "ref",
        "q",
        "job-1",
        serializer=job_serializer,
    )
    result = deserialize_result(payload or b"", deserializer=job_deserializer)

    assert result.success is True
    assert result.result == value
    assert (result.job_try, result.queue_name, result.job_id) == (1, "q", "job-1")
    assert "héllo ✓".encode() in (payload or b""), "written as UTF-8, not \\u escapes"


def test_an_exception_is_written_as_type_and_message_and_read_back_as_remote_job_error() -> None:
    payload = job_serializer({"r": ValueError("bad input"), "s": False})

    assert json.loads(payload) == {"r": {"__error__": "ValueError", "message": "bad input"}, "s": False}
    error = job_deserializer(payload)["r"]
    assert isinstance(error, RemoteJobError)
    assert (error.error_type, error.message, str(error)) == (
        "ValueError",
        "bad input",
        "ValueError: bad input",
    )


def test_an_exception_without_message_reads_back_as_its_type_name() -> None:
    error = job_deserializer(job_serializer(RuntimeError()))

    assert isinstance(error, RemoteJobError)
    assert str(error) == "RuntimeError"
    assert error.message == ""


@pytest.mark.parametrize("message", ["", "cancelled by user"])
def test_a_cancelled_error_reads_back_as_cancelled_error_for_arq(message: str) -> None:
    """ARQ's Job.abort() and Job.result() recognise an aborted job by asyncio.CancelledError."""
    payload = job_serializer({"r": asyncio.CancelledError(message)})

    assert json.loads(payload) == {"r": {"__error__": "CancelledError", "message": message}}
    error = job_deserializer(payload)["r"]
    assert type(error) is asyncio.CancelledError
    assert str(error) == message
    assert job_serializer({"r": error}) == payload


def test_a_remote_job_error_is_written_again_unchanged() -> None:
    first = job_serializer({"r": KeyError("k")})

    again = job_serializer(job_deserializer(first))

    assert again == first


def test_a_long_exception_message_is_truncated() -> None:
    error = job_deserializer(job_serializer(RuntimeError("x" * 10_000)))

    assert error.error_type == "RuntimeError"
    assert len(error.message) == 4000


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_is_refused_with_value_error_before_it_is_unpickled(tmp_path: Path, protocol: int) -> None:
    # Protocols 2+ start with the PROTO opcode and are refused by name; 0 and 1 are simply not JSON.
    target = tmp_path / "pwned"
    payload = pickle.dumps({"f": "execute_task", "a": [_CreatesFile(target)]}, protocol=protocol)

    with pytest.raises(ValueError, match="refusing a pickle" if protocol >= 2 else None):
        job_deserializer(payload)

    assert not target.exists()


def test_the_refused_pickle_would_really_have_run_code(tmp_path: Path) -> None:
    """The control for the test above: ``pickle.loads`` of the same payload does create the file."""
    target = tmp_path / "pwned"
    payload = pickle.dumps({"a": [_CreatesFile(target)]})

    loaded = pickle.loads(payload)
    loaded["a"][0].close()

    assert target.exists()


def test_datetimes_sets_and_pydantic_models_are_encoded() -> None:
    when = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    result = ExecutionResult(
        task_id="t1", status=ExecutionStatus.SUCCESS, usage=TokenUsage(input_tokens=3), started_at=when
    )

    data = json.loads(
        job_serializer(
            {
                "when": when,
                "tags": {"b", "a", "c"},
                "frozen": frozenset({2, 1}),
                "point": _Point(x=1),
                "result": result,
            }
        )
    )

    assert data["when"] == "2024-05-01T12:30:00+00:00"
    assert data["tags"] == ["a", "b", "c"]
    assert data["frozen"] == [1, 2]
    assert data["point"] == {"x": 1, "tags": []}
    assert data["result"]["usage"] == {
        "input_tokens": 3,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
    }
    assert data["result"]["started_at"] == "2024-05-01T12:30:00Z"
    assert ExecutionResult.model_validate(data["result"]) == result


@pytest.mark.parametrize(
    "value", [object(), b"raw bytes", 1 + 2j, Path("/tmp")], ids=["object", "bytes", "complex", "path"]
)
def test_a_value_json_cannot_hold_raises_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="is not JSON serializable"):
        job_serializer({"r": value})


@pytest.mark.parametrize("data", [b"", b"not json", b"\xff\xfe", b"{"])
def test_non_json_bytes_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  # json and UnicodeDecodeError: both ValueError, no message in common
        job_deserializer(data)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b'["execute_task", {"title": "x"}]', "job payload is not a JSON object", id="list"),
        pytest.param(b"42", "job payload is not a JSON object", id="number"),
        pytest.param(b'{"a": [], "k": {}}', "job payload has no function name", id="no-function"),
        pytest.param(
            b'{"f": 7, "a": [], "k": {}}', "job payload has no function name", id="function-not-text"
        ),
        pytest.param(b'{"f": "x", "k": {}}', "job payload has no argument list", id="no-args"),
        pytest.param(b'{"f": "x", "a": {}, "k": {}}', "job payload has no argument list", id="args"),
        pytest.param(
            b'{"f": "x", "a": [], "k": []}', "job payload has no keyword-argument object", id="kwargs"
        ),
        pytest.param(b'{"f": "x", "a": [], "k": {}, "et": 0}', "job payload has no 't' field", id="no-try"),
        pytest.param(
            b'{"f": "x", "a": [], "k": {}, "t": 1, "et": "soon"}',
            "job payload's enqueue time is not a number",
            id="time",
        ),
        pytest.param(b"\xff\xfe{", "job payload is not UTF-8 text", id="not-utf8"),
        pytest.param(b"{not json", "job payload is not JSON (Expecting property name", id="not-json"),
        pytest.param(pickle.dumps({"f": "x"}), "refusing a pickle payload", id="pickle"),
    ],
)
def test_read_job_refuses_what_is_no_job_in_a_few_plain_words(payload: bytes, reason: str) -> None:
    with pytest.raises(UnreadableJob) as refused:
        read_job(payload)

    assert str(refused.value).startswith(reason)
    assert "indices" not in str(refused.value)
    assert len(str(refused.value)) < 120


def test_read_job_reads_arqs_fields_and_takes_null_for_the_try_and_time() -> None:
    full = read_job(
        job_serializer({"t": 3, "f": "execute_task", "a": [{"x": 1}], "k": {"mode": "llm"}, "et": 5})
    )
    bare = read_job(b'{"t": null, "f": "execute_task", "a": [], "k": {}, "et": null}')

    assert full == JobPayload("execute_task", ({"x": 1},), {"mode": "llm"}, 3, 5)
    assert bare == JobPayload("execute_task", (), {}, None, 0)
