"""Reading ARQ result records back into ExecutionResults (``coditect.results``)."""

from __future__ import annotations

import asyncio
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest
from arq.jobs import serialize_result

from coditect.keys import JOB_NAME
from coditect.models import ExecutionResult, ExecutionStatus
from coditect.results import result_from_arq
from coditect.serialization import job_serializer


def arq_result(
    value: Any, *, success: bool, job_try: int = 1, start_ms: int = 1000, finish_ms: int = 3500
) -> bytes:
    payload = serialize_result(
        JOB_NAME, (), {}, job_try, 500, success, value, start_ms, finish_ms, "ref", "q", "j",
        serializer=job_serializer,
    )  # fmt: skip
    assert payload is not None
    return payload


def test_result_from_arq_reads_a_success() -> None:
    value = ExecutionResult(task_id="t1", status=ExecutionStatus.SUCCESS, output="done", attempts=2)

    result = result_from_arq(arq_result(value.to_json_dict(), success=True, job_try=2), "coditect:b:t1")

    assert result == value


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (TimeoutError(), ExecutionStatus.TIMEOUT, "timed out (the job's time limit)"),
        (asyncio.CancelledError(), ExecutionStatus.CANCELLED, "cancelled"),
        (
            asyncio.CancelledError("batch timed out"),
            ExecutionStatus.CANCELLED,
            "cancelled: batch timed out",
        ),
        (ValueError("boom"), ExecutionStatus.FAILED, "ValueError: boom"),
        ("unable to serialize result", ExecutionStatus.FAILED, "unable to serialize result"),
        (None, ExecutionStatus.FAILED, "job failed without an error message"),
    ],
    ids=["timeout", "cancelled", "cancelled-with-reason", "error", "text", "none"],
)
def test_result_from_arq_maps_a_failure(error: object, status: ExecutionStatus, message: str) -> None:
    result = result_from_arq(arq_result(error, success=False, job_try=3), "coditect:b1:t:1")

    assert (result.task_id, result.status, result.error, result.attempts) == ("t:1", status, message, 3)
    assert result.started_at == datetime.fromtimestamp(1, UTC)
    assert result.finished_at == datetime.fromtimestamp(3.5, UTC)
    assert result.duration_s == 2.5


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00garbage",
        pickle.dumps({"r": 1, "s": True}),
        b'{"no": "result"}',
        b"[1, 2]",
        b'{"r": 1, "t": "many"}',
    ],
    ids=["garbage", "pickle", "no-r", "list", "bad-try"],
)
def test_result_from_arq_turns_an_unreadable_record_into_a_failure(raw: bytes) -> None:
    result = result_from_arq(raw, "other-job")

    assert result.task_id == "other-job"
    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert result.error.startswith("unreadable result: ")


def test_result_from_arq_turns_a_success_that_is_no_result_into_a_failure() -> None:
    result = result_from_arq(arq_result({"status": "great"}, success=True, job_try=2), "coditect:b:t1")

    assert (result.task_id, result.status, result.attempts) == ("t1", ExecutionStatus.FAILED, 2)
    assert result.error is not None
    assert result.error.startswith("unreadable result: ")


@pytest.mark.parametrize(
    ("fields", "attempts"),
    [
        pytest.param({"t": -1}, 0, id="negative-try"),
        pytest.param({"t": 2**63}, 2**63, id="huge-try"),
        pytest.param({"st": 10**20, "ft": 10**21}, 1, id="times-out-of-range"),
        pytest.param({"st": 5000, "ft": 1000}, 1, id="finished-before-started"),
    ],
)
def test_result_from_arq_reads_a_record_with_odd_numbers_as_a_failure_without_raising(
    fields: dict[str, Any], attempts: int
) -> None:
    record = {"t": 1, "f": JOB_NAME, "a": [], "k": {}, "et": 0, "s": False, "st": 1000, "ft": 2000}
    record["r"] = {"__error__": "JobExecutionFailed", "message": "retry counter is unusable"}
    raw = job_serializer({**record, **fields})

    result = result_from_arq(raw, "coditect:b:t1")

    assert (result.status, result.attempts) == (ExecutionStatus.FAILED, attempts)
    assert result.error == "JobExecutionFailed: retry counter is unusable"
    assert result.duration_s >= 0
