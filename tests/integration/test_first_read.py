"""A small batch's first read of its events and results goes with its submit, in one write (see
coditect.client.waiter.first_read_commands): real redis-server, real workers."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from coditect.client.held import Command, HeldConnections, Replies
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.client.progress import PROGRESS_INTERVAL_S
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


async def test_a_one_task_batch_is_submitted_and_first_read_in_one_write(
    real_settings: Settings, start_workers: StartWorkers, writes: list[list[str]]
) -> None:
    await start_workers(1)
    async with ProjectOrchestrator(real_settings) as orch:
        await orch.execute_tasks_parallel([task("warm")])
        elapsed = []
        for number in range(10):
            writes.clear()
            started = time.perf_counter()
            (result,) = await orch.execute_tasks_parallel([task(f"t{number}")])
            elapsed.append(time.perf_counter() - started)
            assert result.status is ExecutionStatus.SUCCESS
            assert writes[0] == ["EVALSHA", "XREAD", "MGET"]
            assert all(write == ["XREAD", "MGET"] for write in writes[1:]), writes
    # Woken by the events, not by the counters read at the tick.
    assert statistics.median(elapsed) < PROGRESS_INTERVAL_S * 0.75, elapsed


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
        await asyncio.sleep(0.05)  # no worker yet: it waits on the read sent with the submit
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await start_workers(1)
        results = await orch.execute_tasks_parallel([task("a")], batch_id="cut")
        (other,) = await orch.execute_tasks_parallel([task("b")])
    assert results[0].status is ExecutionStatus.SUCCESS
    assert other.status is ExecutionStatus.SUCCESS
