"""A small batch's first read of its events and results goes with its submit, in one write (see
coditect.client.waiter.first_read_commands): real redis-server, real workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from coditect.client import orchestrator as orchestrator_module
from coditect.client import waiter as waiter_module
from coditect.client.events import end_stream_key, stream_key
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.held import Command, HeldConnections, Replies
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings

StartWorkers = Callable[..., Any]


def task(task_id: str) -> AgentTask:
    return AgentTask(id=task_id, title=f"task {task_id}")


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands of each write on a held connection, by name."""
    sent: list[list[str]] = []
    send = HeldConnections.send

    async def recording(self: HeldConnections, *commands: Command) -> Replies:
        sent.append([str(command[0]) for command in commands])
        return await send(self, *commands)

    monkeypatch.setattr(HeldConnections, "send", recording)
    return sent


async def test_a_one_task_batch_is_submitted_read_and_done_in_one_write(
    real_settings: Settings,
    start_workers: StartWorkers,
    writes: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No tick within the test: any write after the first would be a wake-up by an event.
    for module in (waiter_module, orchestrator_module):
        monkeypatch.setattr(module, "PROGRESS_INTERVAL_S", 60.0)
    await start_workers(1)
    async with ProjectOrchestrator(real_settings) as orch:
        await orch.execute_tasks_parallel([task("warm")])
        for number in range(10):
            writes.clear()
            (result,) = await orch.execute_tasks_parallel([task("t")], batch_id=f"b{number}")
            assert result.status is ExecutionStatus.SUCCESS
            # Not woken by the task's start: it waits on the batch's end stream, then has the result.
            assert writes == [["EVALSHA", "XREAD", "MGET"]]
            ((_, end),) = await orch.redis.xrange(end_stream_key(f"b{number}"))
            assert end[b"type"] == b"batch.finished"
            assert (end[b"total"], end[b"success"], end[b"failed"]) == (b"1", b"1", b"0")


async def test_a_batch_submitted_again_is_followed_and_the_connection_stays_clean(
    real_settings: Settings, start_workers: StartWorkers
) -> None:
    await start_workers(1)
    async with ProjectOrchestrator(real_settings) as orch:
        first = await orch.execute_tasks_parallel([task("a")], batch_id="again")
        again = await orch.execute_tasks_parallel([task("a")], batch_id="again")
        assert again == first
        (other,) = await orch.execute_tasks_parallel([task("b")])
    assert other.status is ExecutionStatus.SUCCESS


async def test_the_deadline_holds_while_the_first_read_waits(real_settings: Settings) -> None:
    async with ProjectOrchestrator(real_settings) as orch:  # no worker: nothing runs
        started = time.perf_counter()
        (result,) = await orch.execute_tasks_parallel([task("a")], timeout_s=0.05)
        assert time.perf_counter() - started < 2.0
        assert result.status is ExecutionStatus.TIMEOUT


async def test_a_wait_cancelled_during_the_first_read_leaves_no_reply_behind(
    real_settings: Settings, start_workers: StartWorkers
) -> None:
    async with ProjectOrchestrator(real_settings) as orch:
        waiting = asyncio.create_task(orch.execute_tasks_parallel([task("a")], batch_id="cut"))
        # Submitted (its events are written by the submit call): no worker yet, so it waits on its first read.
        assert await orch.redis.xread({stream_key("cut"): "0-0"}, count=1, block=10_000)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await start_workers(1)
        results = await orch.execute_tasks_parallel([task("a")], batch_id="cut")
        (other,) = await orch.execute_tasks_parallel([task("b")])
    assert results[0].status is ExecutionStatus.SUCCESS
    assert other.status is ExecutionStatus.SUCCESS
