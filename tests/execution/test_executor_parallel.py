"""ADR-001's promise: tasks gathered on one event loop run at once, not one after another."""

from __future__ import annotations

import asyncio
import time

import pytest

from coditect.execution.executor import TaskExecutor
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings


def settings_with_latency(monkeypatch: pytest.MonkeyPatch, latency_s: float) -> Settings:
    monkeypatch.setenv("CODITECT_OFFLINE_LATENCY_S", str(latency_s))
    return Settings(_env_file=None)


async def test_three_two_second_tasks_finish_in_under_three_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_with_latency(monkeypatch, 2)
    tasks = [AgentTask(id=f"adr-{n}", title=f"Task {n}") for n in range(3)]

    async with TaskExecutor(settings) as executor:
        clock = time.perf_counter()
        results = await asyncio.gather(*(executor.execute(task) for task in tasks))
        elapsed = time.perf_counter() - clock

    assert [result.status for result in results] == [ExecutionStatus.SUCCESS] * 3
    assert [result.task_id for result in results] == ["adr-0", "adr-1", "adr-2"]
    assert 2.0 <= elapsed < 3.0, f"3 tasks of 2 s took {elapsed:.2f} s"
    # Each task really waited its 2 s: the time was overlapped, not skipped.
    assert all(result.duration_s >= 2.0 for result in results)


async def test_fifty_tasks_run_concurrently(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_with_latency(monkeypatch, 0.2)
    tasks = [AgentTask(title=f"Task {n}") for n in range(50)]

    async with TaskExecutor(settings) as executor:
        clock = time.perf_counter()
        results = await asyncio.gather(*(executor.execute(task) for task in tasks))
        elapsed = time.perf_counter() - clock

    assert all(result.status is ExecutionStatus.SUCCESS for result in results)
    assert [result.task_id for result in results] == [task.id for task in tasks]
    # In sequence this would take 10 s.
    assert 0.2 <= elapsed < 1.0, f"50 tasks of 0.2 s took {elapsed:.2f} s"
