"""A batch is enqueued whole or not at all (``BatchStore.submit``, ``discard.lua``, ``memory.py``).

On fakeredis: a later chunk of a big batch that fails (a real script error, from a key of the wrong
type) makes the store withdraw what it sent; a batch that does not fit in Redis's memory is refused
before anything is written. The same against a real redis-server with ``maxmemory``:
``tests/integration/test_redis_config.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import func
from redis.exceptions import ResponseError

import coditect.client.batches as batches
from coditect.client.batches import BatchStore
from coditect.client.memory import check_room, estimated_bytes
from coditect.errors import RedisRefusedError
from coditect.keys import JOB_NAME
from coditect.lua import script
from coditect.models import AgentTask
from coditect.redis_config import ServerInfo
from tests.support.fake_backend import QUEUE, FakeBackend, wait_until

RUNNING = asyncio.Event()


async def held(ctx: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """coditect's job name: runs until it is aborted."""
    RUNNING.set()
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@pytest.fixture
def store(pool: ArqRedis, monkeypatch: pytest.MonkeyPatch) -> BatchStore:
    monkeypatch.setattr(batches, "ATOMIC_TASKS", 4)
    monkeypatch.setattr(batches, "CHUNK", 3)
    return BatchStore(pool, queue_name=QUEUE, keep_result_s=600)


def tasks() -> list[AgentTask]:
    """Chunk 1: a, b, c (no dependencies); chunk 2: d (waits for a), e, f; chunk 3: g."""
    return [
        AgentTask(id="a", title="a"), AgentTask(id="b", title="b"), AgentTask(id="c", title="c"),
        AgentTask(id="d", title="d", depends_on=["a"]), AgentTask(id="e", title="e"),
        AgentTask(id="f", title="f"), AgentTask(id="g", title="g"),
    ]  # fmt: skip


async def batch_keys(pool: ArqRedis, batch_id: str) -> list[bytes]:
    return sorted([key async for key in pool.scan_iter(match=f"*{batch_id}*")])


async def test_a_later_chunk_that_fails_withdraws_the_chunks_sent_and_its_own_half(
    store: BatchStore, pool: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # d is the first task with an unmet dependency: chunk 2 fails on writing it, after writing nothing
    # else of its own; chunk 1 is queued by then.
    await pool.set("coditect:batch:big:waiting", "not a hash")

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await store.submit("big", tasks())

    assert await batch_keys(pool, "big") == []
    assert await pool.zcard(QUEUE) == 0
    assert await store.summary("big") is None
    assert "batch big: not enqueued whole" in caplog.text
    assert "3 queued task(s) removed, 0 running aborted" in caplog.text


async def test_a_withdrawn_batch_asks_its_running_tasks_to_abort_and_keeps_nothing_else(
    store: BatchStore, pool: ArqRedis, backend: FakeBackend
) -> None:
    RUNNING.clear()
    worker = backend.worker([func(held, name=JOB_NAME)], max_jobs=1)
    await store.submit("big", tasks()[:3])  # one call: a runs, b and c wait in the queue
    await asyncio.wait_for(RUNNING.wait(), 5)
    token = await pool.hget("coditect:batch:big", "submission")
    discard = pool.register_script(script("discard"))

    reply = await discard(keys=[QUEUE], args=[*store._head(), "big", token])

    assert [int(n) for n in reply] == [2, 1]
    assert await store.summary("big") is None
    assert await pool.zcard(QUEUE) == 1  # a, held under its lease until its worker records the abort
    await wait_until(lambda: _none_in_progress(pool), what="the running task to record its abort")
    assert await batch_keys(pool, "big") == [b"arq:result:coditect:big:a"]
    assert await pool.zcard(QUEUE) == 0
    assert worker.jobs_complete == 0


async def _none_in_progress(pool: ArqRedis) -> bool:
    return not [key async for key in pool.scan_iter(match="arq:in-progress:*")]


async def test_withdrawing_leaves_a_batch_another_submission_wrote(store: BatchStore, pool: ArqRedis) -> None:
    await store.submit("kept", tasks()[:2])
    discard = pool.register_script(script("discard"))

    reply = await discard(keys=[QUEUE], args=[*store._head(), "kept", "another-submission"])

    assert [int(n) for n in reply] == [-1, 0]
    assert await pool.zcard(QUEUE) == 2
    assert await store.summary("kept") is not None


def server(used_mb: float, max_mb: float, policy: str = "noeviction") -> ServerInfo:
    mb = 1024 * 1024
    return ServerInfo(
        version="7.0", clients=1, used_memory=int(used_mb * mb), maxmemory=int(max_mb * mb), policy=policy
    )


def test_a_batch_that_does_not_fit_under_noeviction_is_refused_naming_the_figures() -> None:
    with pytest.raises(RedisRefusedError) as refused:
        check_room("big", 16 * 1024 * 1024, server(1.5, 12))

    assert refused.value.cause == "oom"
    assert str(refused.value) == (
        "Redis is out of memory (maxmemory 12.0 MB, 1.5 MB used; batch big needs about 16.0 MB): "
        "nothing was enqueued"
    )


@pytest.mark.parametrize(
    "info",
    [server(1.5, 64), server(1.5, 0), server(11.9, 12, "allkeys-lru")],
    ids=["fits", "no-maxmemory", "evicting-policy"],
)
def test_a_batch_is_let_through_when_it_fits_or_redis_would_not_refuse_it(info: ServerInfo) -> None:
    check_room("b", 16 * 1024 * 1024, info)


@pytest.mark.parametrize(
    "task",
    [
        AgentTask(id="t1", title="a title", description="d" * 4000),
        AgentTask(id="t2", title="é" * 300, description="日本語" * 1000, metadata={"k": "v", "n": 1.5}),
        AgentTask(id="t3", title="x", depends_on=["a", "b"], agent="writer"),
    ],
    ids=["ascii", "multibyte", "small"],
)
def test_the_estimate_from_text_lengths_covers_what_redis_stores_of_the_json_twice(task: AgentTask) -> None:
    json_bytes = len(task.model_dump_json().encode())

    assert 2 * json_bytes + 650 < estimated_bytes([task]) <= 2.7 * json_bytes + 1024
    assert abs(estimated_bytes([task, task]) - 2 * estimated_bytes([task])) <= 1  # rounded once
    assert estimated_bytes([]) == 0
