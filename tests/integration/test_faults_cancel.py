"""Fault matrix, timeouts and cancellation (issue 4, row 5), end to end with script agents and a ledger."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings
from tests.support.faults import (
    NO_LEFTOVERS,
    ScriptAgents,
    eventually,
    kill_groups,
    leftovers,
    process_gone,
    run_command,
    script_agents,
)

StartWorkers = Callable[..., Any]


@pytest.fixture
def sleepers(tmp_path: Path) -> Iterator[ScriptAgents]:
    agents = script_agents(tmp_path, sleep_s=60)
    yield agents
    kill_groups([pid for _, pid in agents.entries()])  # a failed test may leave scripts sleeping


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        yield client


async def all_gone(pids: list[int]) -> bool:
    return all(process_gone(pid) for pid in pids)


async def test_a_task_over_its_timeout_ends_timeout_and_its_work_is_killed(
    real_settings: Settings, start_workers: StartWorkers, sleepers: ScriptAgents, client: redis.asyncio.Redis
) -> None:
    await start_workers(1, **sleepers.env)
    settings = real_settings.model_copy(update={"agents_file": sleepers.agents_file})
    task = AgentTask(id="slow", title="slow", agent="sleeper", timeout_s=1.0)
    async with ProjectOrchestrator(settings) as orch:
        started = time.monotonic()
        (result,) = await asyncio.wait_for(orch.run_batch([task], batch_id="late"), 20)
        elapsed = time.monotonic() - started
    assert result.status is ExecutionStatus.TIMEOUT, result
    assert result.error is not None
    assert "timed out after 1 s" in result.error
    assert result.attempts == 1
    assert 1.0 <= elapsed < 5
    ((task_id, pid),) = sleepers.entries()
    assert task_id == "slow"
    await eventually(lambda: all_gone([pid]), timeout_s=5, what=f"script {pid} to be killed")
    assert await leftovers(client) == NO_LEFTOVERS


@pytest.mark.timeout(60)
async def test_coditect_cancel_dequeues_waiting_tasks_and_aborts_running_ones(
    real_settings: Settings,
    start_workers: StartWorkers,
    sleepers: ScriptAgents,
    client: redis.asyncio.Redis,
    worker_env: dict[str, str],
) -> None:
    await start_workers(1, CODITECT_MAX_JOBS="2", **sleepers.env)
    settings = real_settings.model_copy(update={"agents_file": sleepers.agents_file})
    batch = [AgentTask(id=f"c{i}", title=f"task {i}", agent="sleeper") for i in range(6)]
    async with ProjectOrchestrator(settings) as orch:
        await orch.submit(batch, batch_id="doomed")
        waiting = asyncio.create_task(orch.wait("doomed"))
        try:
            started = await eventually(
                lambda: _at_least(2, sleepers.entries()), timeout_s=15, what="2 scripts to start"
            )
            code, out, err = await run_command(
                sys.executable, "-m", "coditect", "cancel", "doomed", "--json",
                "--redis-url", real_settings.redis_url, env=worker_env,
            )  # fmt: skip
            assert code == 0, err.decode()
            assert json.loads(out) == {"batch_id": "doomed", "dequeued": 4, "unstarted": 0, "aborted": 2}
            results = await asyncio.wait_for(asyncio.shield(waiting), 15)
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)

    assert {r.status for r in results} == {ExecutionStatus.CANCELLED}, results
    assert {r.error for r in results} == {"cancelled by user"}
    # Nothing is left that could still start, and only the two running tasks ever started.
    assert await leftovers(client) == NO_LEFTOVERS
    assert sleepers.entries() == started
    await eventually(
        lambda: all_gone([pid for _, pid in started]), timeout_s=5, what="the aborted scripts to be killed"
    )


async def _at_least(count: int, entries: list[tuple[str, int]]) -> list[tuple[str, int]] | None:
    return entries if len(entries) >= count else None
