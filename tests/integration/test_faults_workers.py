"""Fault matrix, workers (issue 4, rows 1 and 2): SIGKILL and SIGTERM of real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from coditect.client.events import read_events
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.keys import job_id_for
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.settings import Settings
from tests.support.faults import NO_LEFTOVERS, eventually, held_by, leftovers
from tests.support.workers import WorkerProcess

StartWorkers = Callable[..., Any]


def tasks(count: int, prefix: str) -> list[AgentTask]:
    return [AgentTask(id=f"{prefix}{i}", title=f"task {i}") for i in range(count)]


def pid_of(result: ExecutionResult) -> int:
    assert result.worker is not None
    return int(result.worker.rsplit(":", 1)[1])


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        yield client


async def collect_done(
    client: redis.asyncio.Redis, batch_id: str, task_ids: list[str], timeout_s: float
) -> Counter[str]:
    """Follow the batch's events until every task ended; how many final events each job id had."""
    expected = {job_id_for(batch_id, task_id) for task_id in task_ids}
    reported: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    last = "0-0"
    while not expected <= reported.keys():
        left = deadline - time.monotonic()
        assert left > 0, f"unfinished after {timeout_s} s: {sorted(expected - reported.keys())}"
        for event in await read_events(client, batch_id, last, block_ms=int(min(left, 1.0) * 1000) or 1):
            last = event.id
            if event.is_final and event.task_id is not None:
                reported[job_id_for(batch_id, event.task_id)] += 1
    return reported


async def exit_code(worker: WorkerProcess, timeout_s: float) -> int:
    assert worker.process is not None
    async with asyncio.timeout(timeout_s):
        return await worker.process.wait()


# -- 1. SIGKILL --------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_a_killed_workers_tasks_run_again_elsewhere_after_one_lease_not_the_job_timeout(
    real_settings: Settings, start_workers: StartWorkers, client: redis.asyncio.Redis
) -> None:
    victim, *survivors = await start_workers(
        3,
        CODITECT_LEASE_S="3",
        CODITECT_JOB_TIMEOUT_S="600",  # ARQ would wait 610 s before anyone else may run a dead worker's job
        CODITECT_OFFLINE_LATENCY_S="2",
        CODITECT_MAX_JOBS="4",
    )
    batch = tasks(24, "k")
    async with ProjectOrchestrator(real_settings) as orch:
        await orch.submit(batch, batch_id="killed")
        in_flight = await eventually(
            lambda: _at_least(3, held_by(client, victim.pid)), timeout_s=10, what="the victim to hold 3 tasks"
        )
        killed_at = time.time()
        assert await victim.kill() == -signal.SIGKILL
        reported = await collect_done(client, "killed", [t.id for t in batch], timeout_s=30)
        recovered_in = time.time() - killed_at
        results = {r.task_id: r for r in await orch.results("killed")}

    # Exactly one final result per task: each job reported done once, nothing left running or queued.
    assert set(reported.values()) == {1}, reported
    assert await leftovers(client) == NO_LEFTOVERS
    assert all(r.status is ExecutionStatus.SUCCESS for r in results.values()), results
    survivor_pids = {w.pid for w in survivors}
    for task_id in in_flight:
        rerun = results[task_id]
        assert rerun.attempts >= 2, rerun
        assert pid_of(rerun) in survivor_pids, rerun
        assert rerun.finished_at is not None
        assert rerun.finished_at.timestamp() - killed_at < 15, rerun
    assert {r.attempts for task_id, r in results.items() if task_id not in in_flight} == {1}
    assert recovered_in < 15


@pytest.mark.timeout(60)
async def test_a_killed_workers_tasks_run_again_before_the_backlog_behind_them(
    real_settings: Settings, start_workers: StartWorkers, client: redis.asyncio.Redis
) -> None:
    victim, survivor = await start_workers(
        2,
        CODITECT_LEASE_S="3",
        CODITECT_JOB_TIMEOUT_S="600",
        CODITECT_OFFLINE_LATENCY_S="2",
        CODITECT_MAX_JOBS="2",
    )
    batch = tasks(40, "q")  # 18 rounds of work for the survivor alone: a backlog of about 36 s
    async with ProjectOrchestrator(real_settings) as orch:
        await orch.submit(batch, batch_id="backlog")
        in_flight = await eventually(
            lambda: _at_least(2, held_by(client, victim.pid)), timeout_s=10, what="the victim to hold 2 tasks"
        )
        killed_at = time.time()
        await victim.kill()
        reruns = await eventually(
            lambda: _all_found(orch, "backlog", sorted(in_flight)),
            timeout_s=15,
            what="the killed worker's tasks to finish",
        )
        states = Counter(r.status for r in await orch.results("backlog"))
        await orch.cancel("backlog")
        await asyncio.wait_for(orch.wait("backlog"), 15)

    for rerun in reruns.values():
        assert rerun.status is ExecutionStatus.SUCCESS, rerun
        assert (rerun.attempts, pid_of(rerun)) == (2, survivor.pid)
        assert rerun.finished_at is not None
        assert rerun.finished_at.timestamp() - killed_at < 15
    assert states[ExecutionStatus.QUEUED] >= 20, states  # they did not wait for the queue to drain
    assert await leftovers(client) == NO_LEFTOVERS


async def _all_found(
    orch: ProjectOrchestrator, batch_id: str, task_ids: list[str]
) -> dict[str, ExecutionResult] | None:
    found = await orch.store.fetch_results(batch_id, task_ids)
    return found if len(found) == len(task_ids) else None


async def _at_least(count: int, probe: Any) -> set[str] | None:
    held: set[str] = await probe
    return held if len(held) >= count else None


# -- 2. SIGTERM --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_sigterm_with_a_long_grace_lets_running_tasks_finish_and_leaves_the_rest_queued(
    real_settings: Settings, start_workers: StartWorkers, client: redis.asyncio.Redis
) -> None:
    (worker,) = await start_workers(
        1, CODITECT_SHUTDOWN_GRACE_S="30", CODITECT_OFFLINE_LATENCY_S="1.5", CODITECT_MAX_JOBS="3"
    )
    batch = tasks(5, "g")
    async with ProjectOrchestrator(real_settings) as orch:
        await orch.submit(batch, batch_id="graceful")
        running = await eventually(
            lambda: _at_least(3, held_by(client, worker.pid)), timeout_s=10, what="3 running tasks"
        )
        signalled_at = time.time()
        worker.signal(signal.SIGTERM)
        assert await exit_code(worker, timeout_s=20) == 0
        exited_in = time.time() - signalled_at
        after_exit = {r.task_id: r for r in await orch.results("graceful")}
        waiting = [t.id for t in batch if t.id not in running]
        assert {task_id: after_exit[task_id].status for task_id in waiting} == dict.fromkeys(
            waiting, ExecutionStatus.QUEUED
        )
        assert await client.exists(*(f"arq:retry:{job_id_for('graceful', t)}" for t in waiting)) == 0

        (successor,) = await start_workers(1)
        final = {r.task_id: r for r in await asyncio.wait_for(orch.wait("graceful"), 20)}

    assert exited_in < 10  # it left once its tasks were done, not after the whole grace period
    for task_id in running:
        result = after_exit[task_id]
        assert result.status is ExecutionStatus.SUCCESS, result
        assert (result.attempts, pid_of(result)) == (1, worker.pid)
        assert result.finished_at is not None
        assert result.finished_at.timestamp() > signalled_at
    assert {
        task_id: (r.status, pid_of(r)) for task_id, r in final.items() if task_id in waiting
    } == dict.fromkeys(waiting, (ExecutionStatus.SUCCESS, successor.pid))
    assert await leftovers(client) == NO_LEFTOVERS


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "command", [None, [sys.executable, "-m", "coditect", "worker"]], ids=["arq", "coditect-worker"]
)
async def test_sigterm_with_a_short_grace_puts_running_tasks_back_for_another_worker(
    real_settings: Settings,
    start_workers: StartWorkers,
    client: redis.asyncio.Redis,
    worker_env: dict[str, str],
    command: list[str] | None,
) -> None:
    env = {"CODITECT_SHUTDOWN_GRACE_S": "1", "CODITECT_OFFLINE_LATENCY_S": "3", "CODITECT_MAX_JOBS": "3"}
    async with started(WorkerProcess({**worker_env, **env}, command)) as worker:
        await _put_back_and_finish_elsewhere(real_settings, start_workers, client, worker)


@contextlib.asynccontextmanager
async def started(worker: WorkerProcess) -> AsyncIterator[WorkerProcess]:
    try:
        yield await worker.start()
    finally:
        await worker.stop()


async def _put_back_and_finish_elsewhere(
    real_settings: Settings, start_workers: StartWorkers, client: redis.asyncio.Redis, worker: WorkerProcess
) -> None:
    batch = tasks(3, "s")
    async with ProjectOrchestrator(real_settings) as orch:
        await orch.submit(batch, batch_id="short")
        await eventually(
            lambda: _at_least(3, held_by(client, worker.pid)), timeout_s=10, what="3 running tasks"
        )
        signalled_at = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert await exit_code(worker, timeout_s=10) == 0
        exited_in = time.monotonic() - signalled_at
        states = [r.status for r in await orch.results("short")]
        # Back in the queue, due now, held by nobody: none lost, none left running.
        assert states == [ExecutionStatus.QUEUED] * 3
        assert (await leftovers(client))["in_progress"] == 0
        scores = [await client.zscore("coditect:queue", job_id_for("short", t.id)) for t in batch]
        assert all(score is not None and score <= time.time() * 1000 for score in scores), scores

        (successor,) = await start_workers(1)
        results = {r.task_id: r for r in await asyncio.wait_for(orch.wait("short"), 20)}

    assert exited_in < 1 + 4  # the grace period, then cancelled at once
    assert sum("cancelled, will be run again" in line for line in worker.lines) == 3
    for result in results.values():
        assert result.status is ExecutionStatus.SUCCESS, result
        assert (result.attempts, pid_of(result)) == (2, successor.pid)
    assert await leftovers(client) == NO_LEFTOVERS


@pytest.mark.timeout(60)
async def test_a_task_that_kills_its_worker_every_time_fails_after_max_tries(
    real_settings: Settings, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """ARQ counts every start, crashes included: the task ends failed, and no worker is stuck on it."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    ledger = tmp_path / "ledger.txt"
    (scripts / "execute_crasher.py").write_text(
        "import os, signal\n"
        f"open({str(ledger)!r}, 'a').write(f'{{os.getppid()}}\\n')\n"
        "os.kill(os.getppid(), signal.SIGKILL)  # the worker running this script\n"
    )
    agents = tmp_path / "agents.json"
    agents.write_text('{"agents": [{"name": "crasher", "mode": "script"}]}')
    workers = await start_workers(
        3,
        CODITECT_LEASE_S="1",
        CODITECT_MAX_TRIES="2",
        CODITECT_SCRIPTS_DIR=str(scripts),
        CODITECT_AGENTS_FILE=str(agents),
    )
    settings = real_settings.model_copy(update={"agents_file": agents})
    async with ProjectOrchestrator(settings) as orch:
        (result,) = await orch.run_batch(
            [AgentTask(id="crash", title="take the worker down", agent="crasher")], timeout_s=30
        )

    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert "max 2 retries exceeded" in result.error
    assert result.attempts == 2
    killed = [int(pid) for pid in ledger.read_text().split()]
    assert len(killed) == 2
    assert len(set(killed)) == 2  # two different workers each died once
    alive = [w for w in workers if w.pid not in killed]
    assert len(alive) == 1
    assert alive[0].process is not None
    assert alive[0].process.returncode is None
