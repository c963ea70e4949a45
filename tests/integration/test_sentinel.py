"""Redis high availability: a Sentinel fails the master over mid-batch and the batch still completes.

Real processes throughout: a master and a replica (AOF on both), three ``redis-sentinel``s (quorum 2,
down-after 1 s), two worker processes (one per entry point: ``arq coditect.jobs.WorkerSettings`` and
``coditect worker``) and the orchestrator of this test, all on ``redis+sentinel://``.

Replication is asynchronous: writes the master took in its last moments may never reach the
replica. What the batch relies on then: a job whose enqueue was lost is enqueued again by the
orchestrator's full check (``ProjectOrchestrator.wait``); a claim that was lost makes the job
claimable again, so it may run twice, and the first result written wins.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from coditect.client.orchestrator import BatchProgress, ProjectOrchestrator
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings
from tests.support.sentinel import SentinelCluster
from tests.support.workers import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
TASKS = 48
KILL_AFTER_DONE = 8


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path / "sentinel")
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def workers(cluster: SentinelCluster) -> AsyncIterator[list[WorkerProcess]]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CODITECT_", "ANTHROPIC_", "OPENAI_"))}
    env = {
        **keep,
        "CODITECT_REDIS_URL": cluster.url,
        "CODITECT_POLL_INTERVAL_S": "0.05",
        "CODITECT_OFFLINE_LATENCY_S": "0.25",
        "CODITECT_MAX_JOBS": "4",
        "CODITECT_LEASE_S": "3",
        "PYTHONPATH": str(ROOT),
    }
    started = [
        WorkerProcess(env),
        WorkerProcess(env, [sys.executable, "-m", "coditect", "worker"]),
    ]
    try:
        await asyncio.gather(*(worker.start() for worker in started))
        yield started
    finally:
        await asyncio.gather(*(worker.stop() for worker in started))


async def test_the_master_fails_over_mid_batch_and_every_task_gets_its_result(
    cluster: SentinelCluster, workers: list[WorkerProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="coditect")
    settings = Settings(_env_file=None, redis_url=cluster.url, poll_interval_s=0.05)
    tasks = [AgentTask(id=f"t{i}", title=f"task {i}") for i in range(TASKS)]
    time_to_kill = asyncio.Event()
    done_at_kill: list[int] = []
    killed_at: list[float] = []

    def on_progress(progress: BatchProgress) -> None:
        if progress.done >= KILL_AFTER_DONE and not time_to_kill.is_set():
            done_at_kill.append(progress.done)
            time_to_kill.set()

    async def fail_over() -> float:
        await time_to_kill.wait()
        await cluster.kill_master()
        killed = time.monotonic()
        killed_at.append(time.time())
        await cluster.wait_for_master(cluster.replica_port, timeout_s=20)
        return time.monotonic() - killed

    async with ProjectOrchestrator(settings) as orch:
        assert (await orch.redis.info("server"))["tcp_port"] == cluster.master_port
        failover = asyncio.create_task(fail_over())
        try:
            async with asyncio.timeout(30):
                results = await orch.run_batch(tasks, batch_id="failover", on_progress=on_progress)
                failover_s = await failover
        finally:
            failover.cancel()
        # The orchestrator's pool follows the master that Sentinel names now.
        assert (await orch.redis.info("server"))["tcp_port"] == cluster.replica_port
        assert (await orch.redis.info("replication"))["role"] == "master"

    assert done_at_kill, "the master was never killed"
    assert done_at_kill[0] < TASKS, "the master was not killed mid-batch"
    assert [r.task_id for r in results] == [t.id for t in tasks]
    assert [r.status for r in results] == [ExecutionStatus.SUCCESS] * TASKS, [r.error for r in results]
    in_flight = 2 * 4  # two workers, four slots each
    finished_after_kill = sum(
        1 for r in results if r.finished_at and r.finished_at.timestamp() > killed_at[0]
    )
    assert finished_after_kill >= TASKS - done_at_kill[0] - in_flight
    ran_on = {int(r.worker.rsplit(":", 1)[1]) for r in results if r.worker}
    assert ran_on == {w.pid for w in workers}
    for worker in workers:
        assert worker.process is not None
        assert worker.process.returncode is None, "\n".join(worker.lines[-20:])
    resubmitted = [r.getMessage() for r in caplog.records if "lost by Redis" in r.getMessage()]
    outage_retries = sum(1 for r in caplog.records if "unreachable" in r.getMessage())
    worker_errors = sum(1 for w in workers for line in w.lines if "redis error" in line or "failed" in line)
    print(  # the observations the report quotes (pytest -s)
        f"\nsentinel failover: {failover_s:.2f} s after SIGKILL; {done_at_kill[0]}/{TASKS} done at the kill; "
        f"orchestrator: {outage_retries} retries, re-enqueued {resubmitted or 'nothing'}; "
        f"worker log lines about Redis errors: {worker_errors}; "
        f"tasks with attempts > 1: {sum(1 for r in results if r.attempts > 1)}"
    )
