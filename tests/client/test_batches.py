"""BatchStore on fakeredis: idempotent enqueue, bulk reads, states, cancellation; result_from_arq."""

from __future__ import annotations

import asyncio
import json
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import serialize_result
from arq.worker import func

from coditect.client.batches import BatchRecord, BatchStore, result_from_arq
from coditect.jobs import JOB_NAME
from coditect.keys import done_key, job_id_for, wake_channel
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.serialization import job_serializer
from tests.support.fake_backend import QUEUE, FakeBackend, now_ms, wait_until

KEEP_S = 600


@pytest.fixture
def store(pool: ArqRedis) -> BatchStore:
    return BatchStore(pool, queue_name=QUEUE, keep_result_s=KEEP_S)


def tasks(count: int, prefix: str = "t") -> list[AgentTask]:
    return [AgentTask(id=f"{prefix}{i}", title=f"task {i}") for i in range(count)]


def arq_result(
    value: Any, *, success: bool, job_try: int = 1, start_ms: int = 1000, finish_ms: int = 3500
) -> bytes:
    payload = serialize_result(
        JOB_NAME,
        (),
        {},
        job_try,
        500,
        success,
        value,
        start_ms,
        finish_ms,
        "ref",
        QUEUE,
        "j",
        serializer=job_serializer,
    )
    assert payload is not None
    return payload


# -- enqueue --------------------------------------------------------------------------------------


async def test_enqueue_writes_arq_jobs_and_is_idempotent(store: BatchStore, pool: ArqRedis) -> None:
    before = now_ms()

    assert await store.enqueue("b1", tasks(3)) == 3
    assert await store.enqueue("b1", tasks(3)) == 0
    assert await store.enqueue("b1", tasks(4)) == 1, "only the new task is added"

    job_id = job_id_for("b1", "t0")
    assert job_id == "coditect:b1:t0"
    assert await pool.zcard(QUEUE) == 4
    assert before <= await pool.zscore(QUEUE, job_id) <= now_ms()
    job = json.loads(await pool.get(f"arq:job:{job_id}"))
    assert (job["f"], job["k"], job["t"]) == (JOB_NAME, {}, None)
    assert job["a"] == [tasks(1)[0].model_dump(mode="json")]
    assert 86_300_000 < await pool.pttl(f"arq:job:{job_id}") <= 86_400_000, "a job lives at least a day"


async def test_enqueue_adds_nothing_once_the_result_exists(store: BatchStore, pool: ArqRedis) -> None:
    await store.enqueue("b1", tasks(2))
    await store.cancel([job_id_for("b1", "t0")], "stop")  # t0 now has a (cancelled) result

    assert await store.enqueue("b1", tasks(2)) == 0
    assert await pool.zscore(QUEUE, job_id_for("b1", "t0")) is None


async def test_enqueue_wakes_idle_workers(store: BatchStore, backend: FakeBackend) -> None:
    listener = backend.pool().pubsub()
    await listener.subscribe(wake_channel(QUEUE))
    try:
        await store.enqueue("b1", tasks(2))
        await store.enqueue("b1", tasks(2))  # adds nothing: publishes nothing
        await store.enqueue("b1", [*tasks(2), AgentTask(id="x", title="x")])
        messages = []
        async with asyncio.timeout(5):
            while len(messages) < 3:
                message = await listener.get_message(timeout=1)
                if message is not None:
                    messages.append(message)
        extra = await listener.get_message(timeout=0.05)
    finally:
        await listener.aclose()

    assert [m["type"] for m in messages] == ["subscribe", "message", "message"]
    assert [m["data"] for m in messages[1:]] == [b"2", b"1"]
    assert extra is None


async def test_enqueue_of_many_tasks_uses_several_chunks(store: BatchStore, pool: ArqRedis) -> None:
    assert await store.enqueue("big", tasks(1201)) == 1201
    assert await pool.zcard(QUEUE) == 1201
    assert await store.enqueue("big", []) == 0


# -- reading results ------------------------------------------------------------------------------


async def test_fetch_results_reads_more_than_one_chunk(store: BatchStore, pool: ArqRedis) -> None:
    job_ids = [job_id_for("b1", f"t{i}") for i in range(1203)]
    finished = job_ids[::2]
    async with pool.pipeline(transaction=False) as pipe:
        for job_id in finished:
            value = ExecutionResult(
                task_id=job_id.rsplit(":", 1)[1], status=ExecutionStatus.SUCCESS, output=job_id
            )
            pipe.set(f"arq:result:{job_id}", arq_result(value.to_json_dict(), success=True))
        await pipe.execute()

    found = await store.fetch_results(job_ids)

    assert list(found) == finished
    assert all(found[job_id].output == job_id for job_id in finished)
    assert found[job_id_for("b1", "t1202")].task_id == "t1202"
    assert await store.fetch_results([]) == {}


def test_result_from_arq_reads_a_success() -> None:
    value = ExecutionResult(task_id="t1", status=ExecutionStatus.SUCCESS, output="done", attempts=2)

    result = result_from_arq(arq_result(value.to_json_dict(), success=True, job_try=2), "coditect:b:t1")

    assert result == value


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (TimeoutError(), ExecutionStatus.TIMEOUT, "TimeoutError"),
        (asyncio.CancelledError(), ExecutionStatus.CANCELLED, "CancelledError"),
        (
            asyncio.CancelledError("batch timed out"),
            ExecutionStatus.CANCELLED,
            "CancelledError: batch timed out",
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


# -- state ----------------------------------------------------------------------------------------


async def test_states_missing_and_count_running(store: BatchStore, pool: ArqRedis) -> None:
    await store.enqueue("b1", tasks(3))
    queued, running, gone = (job_id_for("b1", f"t{i}") for i in range(3))
    await pool.set(f"arq:in-progress:{running}", "worker")
    await pool.delete(f"arq:job:{gone}")

    assert await store.states([queued, running, gone]) == [
        ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.PENDING,
    ]  # fmt: skip
    assert await store.missing([queued, running, gone]) == [gone]
    assert await store.count_running([queued, running, gone]) == 1
    assert await store.count_running([]) == 0


async def test_count_running_over_several_chunks(store: BatchStore, pool: ArqRedis) -> None:
    job_ids = [f"j{i}" for i in range(1100)]
    async with pool.pipeline(transaction=False) as pipe:
        for job_id in job_ids[::3]:
            pipe.set(f"arq:in-progress:{job_id}", "w")
        await pipe.execute()

    assert await store.count_running(job_ids) == len(job_ids[::3])


# -- cancel ---------------------------------------------------------------------------------------


async def test_cancel_removes_queued_jobs_and_asks_running_ones_to_abort(
    store: BatchStore, pool: ArqRedis
) -> None:
    await store.enqueue("b1", tasks(3))
    queued, running, finished = (job_id_for("b1", f"t{i}") for i in range(3))
    await pool.set(f"arq:in-progress:{running}", "worker")
    await pool.set(f"arq:result:{finished}", b"kept")

    assert await store.cancel([queued, running, finished], "cancelled by user") == (1, 1)

    assert await pool.zscore(QUEUE, queued) is None
    assert await pool.exists(f"arq:job:{queued}", f"arq:retry:{queued}") == 0
    result = result_from_arq(await pool.get(f"arq:result:{queued}"), queued)
    assert (result.task_id, result.status, result.error, result.attempts) == (
        "t0",
        ExecutionStatus.CANCELLED,
        "CancelledError: cancelled by user",
        0,
    )
    assert KEEP_S * 1000 - 1000 < await pool.pttl(f"arq:result:{queued}") <= KEEP_S * 1000
    assert await pool.zscore(QUEUE, running) is not None, "a running job stays until its worker stops it"
    assert await pool.zscore("arq:abort", running) is not None
    assert await store.pending_aborts() == 1
    assert await pool.get(f"arq:result:{finished}") == b"kept"
    assert await store.cancel([queued], "again") == (0, 0)


async def test_a_job_cancelled_before_it_started_reports_zero_attempts(
    store: BatchStore, pool: ArqRedis
) -> None:
    await store.enqueue("b1", tasks(1))
    job_id = job_id_for("b1", "t0")
    await store.cancel([job_id], "cancelled by user")

    assert result_from_arq(await pool.get(f"arq:result:{job_id}"), job_id).attempts == 0


async def _recording_execute_task(ctx: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    ctx["ran"].append(task["id"])
    if task["id"].startswith("hold"):
        await ctx["release"].wait()
    return ExecutionResult(task_id=task["id"], status=ExecutionStatus.SUCCESS).to_json_dict()


async def test_a_cancelled_job_never_runs_and_a_running_one_is_aborted(
    store: BatchStore, pool: ArqRedis, backend: FakeBackend
) -> None:
    ran: list[str] = []
    release = asyncio.Event()
    await store.enqueue("b1", [AgentTask(id="queued", title="q")])
    assert await store.cancel([job_id_for("b1", "queued")], "cancelled by user") == (1, 0)
    assert await store.wait_done("b1", timeout_s=5) == [job_id_for("b1", "queued")]  # the waiter is told

    backend.worker([func(_recording_execute_task, name=JOB_NAME)], ctx={"ran": ran, "release": release})
    await store.enqueue("b1", [AgentTask(id="hold", title="h")])
    hold = job_id_for("b1", "hold")
    await wait_until(lambda: store.count_running([hold]), what="the job to start")
    assert await store.cancel([hold], "cancelled by user") == (0, 1)

    assert await store.wait_done("b1", timeout_s=5) == [hold]
    results = await store.fetch_results([job_id_for("b1", "queued"), hold])
    assert [r.status for r in results.values()] == [ExecutionStatus.CANCELLED] * 2
    assert ran == ["hold"]
    assert await pool.zcard(QUEUE) == 0


# -- records and the done list --------------------------------------------------------------------


async def test_a_batch_record_is_saved_and_loaded(store: BatchStore, pool: ArqRedis) -> None:
    record = BatchRecord(id="b1", name="nightly", task_ids=["t1", "t2"])

    await store.save(record)

    assert await store.load("b1") == record
    assert await store.load("nope") is None
    assert KEEP_S - 2 < await pool.ttl("coditect:batch:b1") <= KEEP_S


async def test_wait_done_returns_everything_pushed_and_nothing_on_timeout(
    store: BatchStore, pool: ArqRedis
) -> None:
    await pool.rpush(done_key("b1"), "j1", "j2", "j3")

    assert await store.wait_done("b1", timeout_s=1) == ["j1", "j2", "j3"]
    assert await store.wait_done("b1", timeout_s=0.05) == []
    assert await store.wait_done("b1", timeout_s=0) == [], "a zero timeout does not block for ever"


async def test_wait_done_blocks_until_a_job_finishes(store: BatchStore, pool: ArqRedis) -> None:
    waiting = asyncio.create_task(store.wait_done("b1", timeout_s=5))

    done, _ = await asyncio.wait({waiting}, timeout=0.05)
    assert not done, "nothing finished yet: still blocked"
    await pool.rpush(done_key("b1"), "j1")

    async with asyncio.timeout(5):
        assert await waiting == ["j1"]
