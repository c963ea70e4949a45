"""The result flusher (finished jobs written in batches, kept through Redis errors) and the finish
script it calls."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from coditect.client.batches import BatchStore
from coditect.engine.flusher import FinishRecord, ResultFlusher
from coditect.engine.jobrun import batch_info
from coditect.keys import WORKER_CHANNEL_PREFIX, job_id_for, leases_key
from coditect.lua import script
from coditect.models import AgentTask, ExecutionStatus
from tests.support.fake_backend import QUEUE, FakeBackend

HEAD = ["tok", "q:wake", 1_700_000_000_000, 1000, 60_000, 60_000, "worker-1"]

# -- the flusher ----------------------------------------------------------------------------------


class _FlakyScript:
    """A finish script that raises ConnectionError on its first ``failures`` calls; records every call."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[list[Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, *, keys: list[str], args: list[Any]) -> int:
        self.calls.append(list(args))
        self.entered.set()
        await self.gate.wait()
        if len(self.calls) <= self.failures:
            raise RedisConnectionError("Redis blinked")
        return 0


def _record(job_id: str) -> FinishRecord:
    return FinishRecord("done", job_id, b"result", 1000)


def _flusher(fake: _FlakyScript) -> ResultFlusher:
    return ResultFlusher(fake, queue_name="q", head=lambda: list(HEAD))  # type: ignore[arg-type]


async def test_the_flusher_keeps_records_and_retries_after_a_connection_error() -> None:
    fake = _FlakyScript(failures=1)
    flusher = _flusher(fake)
    flusher.start()
    try:
        async with asyncio.timeout(5):
            await flusher.submit(_record("j1"))
    finally:
        await flusher.close()

    assert len(fake.calls) == 2
    assert fake.calls[0] == fake.calls[1] == [*HEAD, "done", "j1", b"result", 1000, 0, ""]


async def test_the_flusher_writes_what_finished_meanwhile_in_one_call_and_close_drains_it() -> None:
    fake = _FlakyScript()
    fake.gate.clear()
    flusher = _flusher(fake)
    flusher.start()
    first = asyncio.create_task(flusher.submit(_record("j1")))
    async with asyncio.timeout(5):
        await fake.entered.wait()
    later = [asyncio.create_task(flusher.submit(_record(f"j{i}"))) for i in (2, 3)]
    closing = asyncio.create_task(flusher.close())  # starts after the submits (tasks run in order)

    fake.gate.set()
    async with asyncio.timeout(5):
        await closing
        await asyncio.gather(first, *later)

    assert [call[len(HEAD) + 1 :: 6] for call in fake.calls] == [["j1"], ["j2", "j3"]]


async def test_a_submitted_record_is_written_even_if_its_job_is_cancelled() -> None:
    fake = _FlakyScript()
    fake.gate.clear()
    flusher = _flusher(fake)
    flusher.start()
    submitting = asyncio.create_task(flusher.submit(_record("j1")))
    async with asyncio.timeout(5):
        await fake.entered.wait()

    submitting.cancel()
    fake.gate.set()
    await flusher.close()

    assert submitting.cancelled()
    assert [call[len(HEAD) + 1] for call in fake.calls] == ["j1"]


async def test_closing_the_flusher_gives_up_on_records_redis_never_takes() -> None:
    fake = _FlakyScript(failures=1000)
    flusher = _flusher(fake)
    flusher.start()
    pending = asyncio.create_task(flusher.submit(_record("j1")))
    async with asyncio.timeout(5):
        await fake.entered.wait()

    await flusher.close(timeout_s=0.1)

    with pytest.raises(ConnectionError, match="result not written: worker shut down"):
        await pending
    await flusher.close()  # closing again is a no-op


# -- the finish script ----------------------------------------------------------------------------


async def finish(pool: ArqRedis, *records: list[Any], head: list[Any] | None = None) -> Any:
    args = list(head or HEAD)
    for record in records:
        args += record
    return await pool.register_script(script("finish"))(keys=[QUEUE, leases_key(QUEUE)], args=args)


async def test_the_finish_script_keeps_the_first_result_and_clears_the_job(pool: ArqRedis) -> None:
    job_id = "j1"
    await pool.set(f"arq:job:{job_id}", b"{}")
    await pool.set(f"arq:retry:{job_id}", 1)
    await pool.set(f"arq:in-progress:{job_id}", "tok")
    await pool.zadd(QUEUE, {job_id: 1})
    await pool.zadd(leases_key(QUEUE), {job_id: 1})
    await pool.zadd("arq:abort", {job_id: 1})

    for payload in (b"first", b"second"):
        await finish(pool, ["done", job_id, payload, 30_000, 0, ""])

    assert await pool.get(f"arq:result:{job_id}") == b"first"
    assert 29_000 < await pool.pttl(f"arq:result:{job_id}") <= 30_000
    assert await pool.exists(f"arq:job:{job_id}", f"arq:retry:{job_id}", f"arq:in-progress:{job_id}") == 0
    assert await pool.zscore(QUEUE, job_id) is None
    assert await pool.zscore(leases_key(QUEUE), job_id) is None
    assert await pool.zscore("arq:abort", job_id) is None


async def test_the_finish_script_keeps_forever_or_not_at_all(pool: ArqRedis) -> None:
    await finish(pool, ["done", "forever", b"r1", -1, 0, ""], ["done", "never", b"r2", 0, 0, ""])

    assert await pool.pttl("arq:result:forever") == -1
    assert await pool.exists("arq:result:never") == 0


async def test_the_finish_script_keeps_the_in_progress_key_when_asked(pool: ArqRedis) -> None:
    await pool.set("arq:in-progress:cron", "tok")

    await finish(pool, ["done", "cron", b"r", 1000, 60_000, ""])

    assert 59_000 < await pool.pttl("arq:in-progress:cron") <= 60_000


async def test_the_finish_script_requeues_only_a_job_this_worker_holds(
    pool: ArqRedis, backend: FakeBackend
) -> None:
    await pool.zadd(QUEUE, {"mine": 1, "theirs": 1, "deferred": 1})
    await pool.set("arq:in-progress:mine", "tok")
    await pool.set("arq:in-progress:theirs", "other")
    await pool.set("arq:in-progress:deferred", "tok")
    await pool.set("arq:retry:deferred", 3)
    listener = backend.pool().pubsub()
    await listener.subscribe("q:wake")
    try:
        requeued = await finish(
            pool,
            ["again", "mine", 5000, 0, 0, ""],
            ["again", "theirs", 6000, 0, 0, ""],
            ["defer", "deferred", 7000, 0, 0, ""],
        )
        await listener.get_message(timeout=1)  # the subscribe confirmation
        message = await listener.get_message(timeout=1)
    finally:
        await listener.aclose()

    assert requeued == 2
    assert await pool.zscore(QUEUE, "mine") == 5000
    assert await pool.exists("arq:in-progress:mine") == 0
    assert await pool.zscore(QUEUE, "theirs") == 1
    assert await pool.get("arq:in-progress:theirs") == b"other"
    assert await pool.zscore(QUEUE, "deferred") == 7000
    assert await pool.get("arq:retry:deferred") == b"2", "a deferred start is not a try"
    assert message is not None
    assert (message["type"], message["data"]) == ("message", b"2")


async def test_a_batch_tasks_finish_updates_its_batch_once(pool: ArqRedis) -> None:
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    await store.submit("b1", [AgentTask(id="t1", title="one"), AgentTask(id="t2", title="two")])
    job_id = job_id_for("b1", "t1")
    result = {"task_id": "t1", "status": "success", "attempts": 1, "usage": {"input_tokens": 5}}
    info = batch_info("success", 1, result=result)

    await finish(pool, ["done", job_id, json.dumps({"r": result}), 60_000, 0, info])
    await finish(pool, ["done", job_id, b"again", 60_000, 0, info])  # a job that ran twice

    assert await store.states("b1") == {"t1": ExecutionStatus.SUCCESS, "t2": ExecutionStatus.QUEUED}
    summary = await store.summary("b1")
    assert summary is not None
    assert (summary.counts["success"], summary.totals["in"], summary.finished) == (1, 5.0, False)


async def test_a_delegated_childs_finish_wakes_the_worker_holding_its_parent(
    pool: ArqRedis, backend: FakeBackend
) -> None:
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    await store.submit("b1", [AgentTask(id="parent", title="delegates")])
    await pool.hset("coditect:batch:b1:parents", "child", "parent 1")
    await pool.hset("coditect:batch:b1:state", "child", "r")
    await pool.hincrby("coditect:batch:b1", "total", 1)
    await pool.set(f"arq:in-progress:{job_id_for('b1', 'parent')}", "holder-token")
    listener = backend.pool().pubsub()
    await listener.subscribe(WORKER_CHANNEL_PREFIX + "holder-token")
    try:
        child = job_id_for("b1", "child")
        await finish(pool, ["done", child, b"{}", 60_000, 0, batch_info("success", 1)])
        await listener.get_message(timeout=1)  # the subscribe confirmation
        message = await listener.get_message(timeout=1)
    finally:
        await listener.aclose()

    assert message is not None
    assert message["data"] == child.encode()


async def test_a_job_done_and_put_back_in_one_call_stays_queued(pool: ArqRedis) -> None:
    # The queue and lease index lose the done jobs after the loop, or before one of them goes back.
    await pool.zadd(QUEUE, {"cron": 1})
    await pool.zadd(leases_key(QUEUE), {"cron": 1})
    await pool.set("arq:in-progress:cron", "tok")

    await finish(pool, ["done", "cron", b"r", 1000, 60_000, ""], ["again", "cron", 5000, 0, 60_000, ""])

    assert await pool.zscore(QUEUE, "cron") == 5000
    assert await pool.zscore(leases_key(QUEUE), "cron") is None
    assert await pool.exists("arq:abort") == 0


async def test_a_finish_call_gives_back_what_its_tasks_reserved_when_their_batch_has_a_budget(
    pool: ArqRedis,
) -> None:
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    await store.submit("plain", [AgentTask(id="t1", title="one")])
    capped = [AgentTask(id=f"t{i}", title="x") for i in (1, 2, 3)]
    await store.submit("capped", capped, fields={"budget_usd": 5})
    await pool.hset("coditect:batch:capped:reserved", mapping={"t1": "0.5 100", "t2": "0.25 50"})
    await pool.hset("coditect:batch:capped", mapping={"reserved_usd": 0.75, "reserved_tokens": 150})
    records = [
        ["done", job_id_for(b, t), b"{}", 60_000, 0, batch_info("success", 1)]
        for b, t in (("plain", "t1"), ("capped", "t1"), ("capped", "t3"))
    ]

    await finish(pool, *records, ["again", job_id_for("capped", "t2"), 5000, 0, 0, ""])

    assert await pool.hgetall("coditect:batch:capped:reserved") == {b"t2": b"0.25 50"}, "t2 not held here"
    assert await pool.hmget("coditect:batch:capped", "reserved_usd", "reserved_tokens") == [b"0.25", b"50"]
    assert await pool.hget("coditect:batch:capped", "n_success") == b"2"
    assert await pool.hget("coditect:batch:plain", "finished") is not None
    assert await pool.exists("coditect:batch:plain:reserved") == 0
