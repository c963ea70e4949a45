"""Batches in Redis (BatchStore and the batch scripts) on fakeredis, with in-process workers whose job
function does what each task's metadata says: succeed, fail, or wait to be released."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import func

import coditect.client.batches as batches
from coditect.client.batches import BatchStore
from coditect.client.events import end_stream_key, read_events
from coditect.clock import now_ms
from coditect.engine.worker import CoditectWorker
from coditect.keys import BATCH_KEY_PREFIX, BATCHES_KEY, JOB_NAME, job_id_for, wake_channel
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.results import result_from_arq
from coditect.serialization import job_serializer
from tests.support.fake_backend import QUEUE, FakeBackend, wait_until

KEEP_S = 600
S, F, C, T = (
    ExecutionStatus.SUCCESS,
    ExecutionStatus.FAILED,
    ExecutionStatus.CANCELLED,
    ExecutionStatus.TIMEOUT,
)
RELEASE: dict[str, asyncio.Event] = {}


async def scripted_task(ctx: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """coditect's job name: ``metadata.outcome`` failed/success, ``metadata.hold`` waits for RELEASE."""
    metadata = task.get("metadata", {})
    if metadata.get("hold"):
        await RELEASE.setdefault(task["id"], asyncio.Event()).wait()
    status = metadata.get("outcome", "success")
    return ExecutionResult(
        task_id=task["id"], status=status, output=f"out-{task['id']}", agent=task.get("agent", "default"),
        attempts=ctx["job_try"], error=None if status == "success" else "scripted failure",
    ).to_json_dict()  # fmt: skip


@pytest.fixture
def store(pool: ArqRedis) -> BatchStore:
    return BatchStore(pool, queue_name=QUEUE, keep_result_s=KEEP_S)


@pytest.fixture
def start_worker(backend: FakeBackend) -> Callable[..., CoditectWorker]:
    RELEASE.clear()

    def start(**options: Any) -> CoditectWorker:
        return backend.worker([func(scripted_task, name=JOB_NAME)], **options)

    return start


def task(task_id: str, *deps: str, outcome: str = "success", hold: bool = False) -> AgentTask:
    metadata: dict[str, str | int | float | bool | None] = {"outcome": outcome}
    if hold:
        metadata["hold"] = True
    return AgentTask(id=task_id, title=f"task {task_id}", depends_on=list(deps), metadata=metadata)


async def finished(store: BatchStore, batch_id: str) -> batches.BatchSummary:
    async def done() -> batches.BatchSummary | None:
        summary = await store.summary(batch_id)
        return summary if summary is not None and summary.finished else None

    result = await wait_until(done, what=f"batch {batch_id} finished")
    assert result is not None
    return result


async def statuses(store: BatchStore, batch_id: str) -> dict[str, ExecutionStatus]:
    results = await store.results(batch_id)
    assert results is not None
    return {result.task_id: result.status for result in results}


# -- submit ---------------------------------------------------------------------------------------


async def test_submit_records_the_batch_and_enqueues_only_tasks_without_dependencies(
    store: BatchStore, pool: ArqRedis
) -> None:
    submitted = await store.submit("b1", [task("a"), task("b", "a"), task("c")], fields={"name": "n"})

    assert (submitted.created, submitted.added) == (True, 3)
    assert await pool.zrange(QUEUE, 0, -1) == [job_id_for("b1", "a").encode(), job_id_for("b1", "c").encode()]
    assert await pool.exists(f"arq:job:{job_id_for('b1', 'b')}") == 0
    assert await store.task_ids("b1") == ["a", "b", "c"]
    assert await store.states("b1") == {
        "a": ExecutionStatus.QUEUED,
        "b": ExecutionStatus.PENDING,
        "c": ExecutionStatus.QUEUED,
    }
    summary = await store.summary("b1")
    assert summary is not None
    assert (summary.name, summary.total, summary.counts["queued"], summary.finished) == ("n", 3, 3, False)
    events = await read_events(pool, "b1", "0-0")
    assert [(e.type, e.task_id) for e in events] == [
        ("batch.submitted", None), ("task.queued", "a"), ("task.queued", "c"),
    ]  # fmt: skip
    assert submitted.last_event_id == events[-1].id
    assert await pool.zscore(BATCHES_KEY, "b1") is not None
    # Running batches keep their keys for a week; nothing in them is left without a TTL.
    assert 6 * 86_400_000 < await pool.pttl(BATCH_KEY_PREFIX + "b1") <= 7 * 86_400_000


async def test_submitting_a_batch_id_again_writes_nothing(store: BatchStore, pool: ArqRedis) -> None:
    await store.submit("b1", [task("a")])
    queued = await pool.zcard(QUEUE)

    again = await store.submit("b1", [task("a"), task("x")])

    assert (again.created, again.added) == (False, 0)
    assert await pool.zcard(QUEUE) == queued
    assert await store.task_ids("b1") == ["a"]


async def test_submit_wakes_idle_workers(store: BatchStore, pool: ArqRedis, backend: FakeBackend) -> None:
    listener = backend.pool().pubsub()
    await listener.subscribe(wake_channel(QUEUE))
    try:
        await listener.get_message(timeout=1)  # the subscription's confirmation
        await store.submit("b1", [task("a"), task("b")])
        message = await listener.get_message(timeout=1)
    finally:
        await listener.aclose()
    assert message is not None
    assert message["type"] == "message"


async def test_a_large_batch_is_sent_in_chunks_with_dependencies_across_them(
    store: BatchStore, start_worker: Callable[..., CoditectWorker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "ATOMIC_TASKS", 10)
    monkeypatch.setattr(batches, "CHUNK", 7)
    chain = [task("t0")] + [task(f"t{i}", f"t{i - 1}") for i in range(1, 25)]
    start_worker()

    submitted = await store.submit("long", chain)

    assert (submitted.created, submitted.added) == (True, 25)
    summary = await finished(store, "long")
    assert summary.counts["success"] == 25
    results = await store.results("long")
    assert results is not None
    assert [r.task_id for r in results] == [t.id for t in chain]


# -- workers drive the graph ----------------------------------------------------------------------


async def test_a_dependant_is_enqueued_in_the_script_that_records_its_dependencys_result(
    store: BatchStore, pool: ArqRedis, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    await store.submit("b1", [task("a", hold=True), task("b", "a"), task("c", hold=True)])
    await wait_until(lambda: _state(store, "b1", "a", ExecutionStatus.RUNNING), what="a running")

    RELEASE["a"].set()

    await wait_until(lambda: _state(store, "b1", "b", ExecutionStatus.SUCCESS), what="b done")
    assert (await store.states("b1"))["c"] is ExecutionStatus.RUNNING, "b ran while c still runs"
    RELEASE["c"].set()
    summary = await finished(store, "b1")
    assert summary.counts["success"] == 3
    types = [(e.type, e.task_id) for e in await read_events(pool, "b1", "0-0")]
    assert types.index(("task.queued", "b")) == types.index(("task.succeeded", "a")) + 1
    assert types[-1] == ("batch.finished", None)


async def _state(store: BatchStore, batch_id: str, task_id: str, status: ExecutionStatus) -> bool:
    return (await store.states(batch_id)).get(task_id) is status


async def test_a_failed_dependency_cancels_its_dependants_transitively_naming_the_cause(
    store: BatchStore, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    graph = [task("a", outcome="failed"), task("b", "a"), task("c", "b"), task("d"), task("e", "d", "b")]
    await store.submit("b1", graph)

    summary = await finished(store, "b1")

    assert (summary.counts["success"], summary.counts["failed"], summary.counts["cancelled"]) == (1, 1, 3)
    results = {r.task_id: r for r in await store.results("b1") or []}
    assert results["a"].status is F
    assert results["b"].error == "not run: dependency a did not succeed"
    assert results["c"].error == "not run: dependency b did not succeed"
    assert results["e"].status is C
    assert all(results[t].attempts == 0 for t in "bce")


async def test_a_task_whose_dependency_failed_before_it_was_written_is_cancelled_at_once(
    store: BatchStore, start_worker: Callable[..., CoditectWorker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "ATOMIC_TASKS", 1)
    monkeypatch.setattr(batches, "CHUNK", 1)
    start_worker()
    submit = asyncio.create_task(store.submit("b1", [task("a", outcome="failed"), task("b", "a")]))
    await submit

    await finished(store, "b1")

    assert await statuses(store, "b1") == {"a": F, "b": C}


# -- cancel ---------------------------------------------------------------------------------------


async def test_cancel_ends_queued_and_waiting_tasks_and_aborts_running_ones(
    store: BatchStore, pool: ArqRedis, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker(max_jobs=1)  # ids sort as the queue does: "run" is claimed, "so-queued" waits its turn
    await store.submit("b1", [task("run", hold=True), task("so-queued"), task("waiting", "run")])
    await wait_until(lambda: _state(store, "b1", "run", ExecutionStatus.RUNNING), what="run running")

    counts = await store.cancel("b1", reason="cancelled by user")

    assert counts == (1, 1, 1)
    summary = await finished(store, "b1")  # the running task's worker records its abort
    assert summary.counts["cancelled"] == 3
    results = {r.task_id: r for r in await store.results("b1") or []}
    assert {r.error for r in results.values()} == {"cancelled by user"}
    assert results["run"].attempts == 1
    assert results["so-queued"].attempts == 0
    assert await pool.zcard(QUEUE) == 0
    assert "run" not in RELEASE or not RELEASE["run"].is_set(), "aborted, not released"


async def test_a_cancelled_batch_enqueues_nothing_afterwards(
    store: BatchStore, start_worker: Callable[..., CoditectWorker]
) -> None:
    await store.submit("b1", [task("a"), task("b", "a")])
    assert await store.cancel("b1", reason="stop") == (1, 1, 0)

    start_worker()
    summary = await finished(store, "b1")

    assert summary.counts["cancelled"] == 2
    assert summary.cancelled == "stop"


async def test_a_timeout_ends_unfinished_tasks_as_timeout_for_good(
    store: BatchStore, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    await store.submit("b1", [task("slow", hold=True), task("later", "slow")])
    await wait_until(lambda: _state(store, "b1", "slow", ExecutionStatus.RUNNING), what="running")

    await store.cancel("b1", reason="batch b1 timed out", as_timeout=True)

    await finished(store, "b1")
    results = await store.results("b1")
    assert results is not None
    assert [(r.status, r.error) for r in results] == [(T, "batch b1 timed out"), (T, "batch b1 timed out")]


async def test_cancelling_a_finished_batch_leaves_it_as_it_was(
    store: BatchStore, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    await store.submit("b1", [task("a")])
    await finished(store, "b1")

    assert await store.cancel("b1", reason="too late") == (0, 0, 0)

    summary = await store.summary("b1")
    assert summary is not None
    assert (summary.cancelled, summary.counts["success"], summary.counts["cancelled"]) == (None, 1, 0)


async def test_cancelling_an_unknown_batch_says_so(store: BatchStore) -> None:
    assert await store.cancel("nope", reason="x") is None
    assert await store.results("nope") is None
    assert await store.summary("nope") is None


# -- reading --------------------------------------------------------------------------------------


async def test_a_finished_batch_has_totals_a_final_event_and_the_keep_ttl(
    store: BatchStore, pool: ArqRedis, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker(batch_keep_s=KEEP_S)
    await store.submit("b1", [task("a"), task("b", outcome="failed")])
    assert not await pool.exists(end_stream_key("b1"))  # written by the end, not before

    summary = await finished(store, "b1")

    assert summary.finished_at is not None
    assert summary.created_at is not None
    assert summary.duration_s is not None
    assert summary.duration_s >= 0
    events = await read_events(pool, "b1", "0-0")
    assert events[-1].type == "batch.finished"
    assert events[-1].data["success"] == 1
    assert events[-1].data["failed"] == 1
    assert 0 < await pool.pttl(BATCH_KEY_PREFIX + "b1") <= KEEP_S * 1000
    ((_, end),) = await pool.xrange(end_stream_key("b1"))  # the end alone, for waiters of nothing else
    assert (end[b"type"], end[b"success"], end[b"failed"]) == (b"batch.finished", b"1", b"1")
    assert 0 < await pool.pttl(end_stream_key("b1")) <= KEEP_S * 1000
    data = summary.to_json_dict()
    assert set(data) >= {"id", "name", "created_at", "counts", "usage", "cost_usd"}


async def test_results_give_unfinished_tasks_their_state_in_order(store: BatchStore) -> None:
    await store.submit("b1", [task("a"), task("b", "a")])

    results = await store.results("b1")

    assert results is not None
    assert [(r.task_id, r.status, r.attempts) for r in results] == [
        ("a", ExecutionStatus.QUEUED, 0), ("b", ExecutionStatus.PENDING, 0),
    ]  # fmt: skip


async def test_recent_lists_batches_newest_first_and_forgets_expired_ones(
    store: BatchStore, pool: ArqRedis
) -> None:
    await store.submit("old", [task("a")])
    await pool.zadd(BATCHES_KEY, {"old": now_ms() - 1000})
    await store.submit("new", [task("a")])
    await pool.zadd(BATCHES_KEY, {"gone": now_ms() + 1000})  # its record expired

    recent = await store.recent()

    assert [summary.id for summary in recent] == ["new", "old"]
    assert await pool.zscore(BATCHES_KEY, "gone") is None


@pytest.mark.parametrize(
    "record",
    [
        {
            "t": 1,
            "s": True,
            "r": ExecutionResult(task_id="a", status=S, output="out", attempts=2),
            "st": 1,
            "ft": 2,
        },
        {"t": 2, "s": False, "r": TimeoutError("job took too long"), "st": 1, "ft": 2},
        {"t": 1, "s": True, "r": {"task_id": "a", "status": "nonsense"}, "st": 1, "ft": 2},
        {"t": 1, "s": True, "r": [1, 2], "st": 1, "ft": 2},
    ],
)
def test_a_record_reads_as_result_from_arq_reads_it(record: dict[str, Any]) -> None:
    raw = job_serializer(record)
    job_id = job_id_for("b", "a")
    assert batches.read_results("b", ["a", "x"], [raw, None]) == {"a": result_from_arq(raw, job_id)}


def test_a_pickled_record_is_refused() -> None:
    (result,) = batches.read_results("b", ["a"], [b"\x80\x04K\x01."]).values()
    assert result.status is F
    assert "pickle" in (result.error or "")


async def test_a_submit_call_larger_than_one_redis_call_writes_every_task_in_order(
    store: BatchStore, pool: ArqRedis
) -> None:
    # submit.lua writes its hashes, order list and queue in calls of at most 4,000 values: 4,500
    # tasks (9,000 values in :tasks) take three calls, with tasks in the same call depending on
    # earlier ones.
    tasks = [task(f"t{i:04}", *([f"t{i - 1:04}"] if i % 1000 == 999 else [])) for i in range(4_500)]

    submitted = await store.submit("big", tasks, atomic=True)

    assert (submitted.created, submitted.added) == (True, 4_500)
    assert await store.task_ids("big") == [t.id for t in tasks]
    waiting = {t.id for t in tasks if t.depends_on}
    states = await store.states("big")
    assert [i for i, s in states.items() if s is ExecutionStatus.PENDING] == sorted(waiting)
    assert len(states) == 4_500
    assert await pool.hlen(BATCH_KEY_PREFIX + "big:tasks") == 4_500
    assert await pool.hgetall(BATCH_KEY_PREFIX + "big:waiting") == {i.encode(): b"1" for i in sorted(waiting)}
    assert await pool.zcard(QUEUE) == 4_500 - len(waiting)
    events = await read_events(pool, "big", "0-0", count=10_000)
    assert [e.task_id for e in events if e.type == "task.queued"] == [t.id for t in tasks if not t.depends_on]
    assert submitted.last_event_id == events[-1].id
