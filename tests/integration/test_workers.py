"""End to end: real redis-server, real ``arq coditect.jobs.WorkerSettings`` worker processes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arq import create_pool

from coditect.client.orchestrator import BatchProgress, ProjectOrchestrator
from coditect.connections import redis_settings_from
from coditect.jobs import JOB_NAME, job_deserializer, job_serializer
from coditect.keys import job_id_for
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings

StartWorkers = Callable[..., Any]


def tasks(count: int, prefix: str = "t", **fields: Any) -> list[AgentTask]:
    return [AgentTask(id=f"{prefix}{i}", title=f"task {i}", **fields) for i in range(count)]


async def test_three_two_second_tasks_on_one_worker_take_under_three_seconds(
    real_settings: Settings, start_workers: StartWorkers
) -> None:
    (worker,) = await start_workers(1, CODITECT_OFFLINE_LATENCY_S="2")
    async with ProjectOrchestrator(real_settings) as orch:
        started = time.perf_counter()
        results = await orch.execute_tasks_parallel(tasks(3))
        elapsed = time.perf_counter() - started
    assert [r.status for r in results] == [ExecutionStatus.SUCCESS] * 3
    assert 2.0 <= elapsed < 3.0, elapsed
    assert {r.worker for r in results} == {f"{r.worker.split(':')[0]}:{worker.pid}" for r in results}


async def test_a_batch_spreads_over_three_workers(
    real_settings: Settings, start_workers: StartWorkers
) -> None:
    workers = await start_workers(3, CODITECT_OFFLINE_LATENCY_S="0.2", CODITECT_MAX_JOBS="4")
    async with ProjectOrchestrator(real_settings) as orch:
        results = await orch.execute_tasks_parallel(tasks(36))
    assert all(r.succeeded for r in results)
    assert [r.task_id for r in results] == [f"t{i}" for i in range(36)]
    ran_on = {int(r.worker.rsplit(":", 1)[1]) for r in results if r.worker}
    assert ran_on == {w.pid for w in workers}


async def test_tasks_submitted_from_another_process_are_read_back(
    real_settings: Settings, start_workers: StartWorkers, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    await start_workers(1)
    batch_file = tmp_path / "batch.json"
    batch_file.write_text(
        json.dumps({"name": "remote", "tasks": [{"id": "a", "title": "A"}, {"id": "b", "title": "B"}]})
    )
    submit = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coditect", "submit", str(batch_file), "--batch-id", "remote-1", "--json",
        env=worker_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await submit.communicate()
    assert submit.returncode == 0, err.decode()
    assert json.loads(out) == {"batch_id": "remote-1"}
    async with ProjectOrchestrator(real_settings) as orch:
        results = await orch.wait("remote-1")
        listed = await orch.results("remote-1")
    assert [(r.task_id, r.status) for r in results] == [("a", "success"), ("b", "success")]
    assert [(r.task_id, r.output) for r in listed] == [(r.task_id, r.output) for r in results]


async def test_the_same_task_enqueued_twice_runs_once(
    real_settings: Settings, start_workers: StartWorkers, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "execute_counter.py").write_text(
        "import json, sys, time\n"
        "task = json.load(sys.stdin)\n"
        f"open({str(ledger)!r}, 'a').write(task['id'] + '\\n')\n"
        "time.sleep(0.3)\n"
        "print('counted', task['id'])\n"
    )
    agents = tmp_path / "agents.json"
    agents.write_text(json.dumps({"agents": [{"name": "counter", "mode": "script"}]}))
    env = {"CODITECT_SCRIPTS_DIR": str(scripts), "CODITECT_AGENTS_FILE": str(agents)}
    await start_workers(2, **env)
    settings = real_settings.model_copy(update={"agents_file": agents})
    batch = tasks(3, prefix="c", agent="counter")
    async with ProjectOrchestrator(settings) as orch:
        await orch.submit(batch, batch_id="twice")
        assert not (await orch.store.submit("twice", batch)).created  # queued or running: refused
        results = await orch.wait("twice")
        assert not (await orch.store.submit("twice", batch)).created  # finished, kept: refused
        for task in batch:  # and a plain ARQ enqueue of a finished task's job id is refused too
            job_id = job_id_for("twice", task.id)
            job = await orch.redis.enqueue_job(
                JOB_NAME, "{}", _job_id=job_id, _queue_name=settings.queue_name
            )
            assert job is None
        rerun = await orch.run_batch(batch, batch_id="twice")  # a re-run attaches to the batch
    assert all(r.succeeded for r in results)
    assert [r.output for r in rerun] == [r.output for r in results]
    assert sorted(ledger.read_text().split()) == ["c0", "c1", "c2"]


async def test_a_plain_arq_client_enqueues_by_name_and_reads_the_result(
    real_settings: Settings, start_workers: StartWorkers
) -> None:
    await start_workers(1)
    pool = await create_pool(
        redis_settings_from(real_settings), job_serializer=job_serializer, job_deserializer=job_deserializer
    )
    try:
        task = AgentTask(id="plain", title="Hello from plain ARQ")
        job = await pool.enqueue_job(JOB_NAME, task.model_dump_json(), _queue_name=real_settings.queue_name)
        assert job is not None
        result = await job.result(timeout=10, poll_delay=0.01)
    finally:
        await pool.aclose()
    assert result["task_id"] == "plain"
    assert result["status"] == "success"
    assert result["output"].endswith("Hello from plain ARQ")


async def test_a_batch_with_no_live_worker_says_so_until_one_starts(
    real_settings: Settings, start_workers: StartWorkers
) -> None:
    notes: list[str] = []
    alone = asyncio.Event()

    def on_progress(progress: BatchProgress) -> None:
        notes.append(progress.note)
        if progress.note:
            alone.set()

    async with ProjectOrchestrator(real_settings) as orch:
        running = asyncio.create_task(orch.execute_tasks_parallel(tasks(2), on_progress=on_progress))
        await asyncio.wait_for(alone.wait(), 30)
        await start_workers(1)
        results = await asyncio.wait_for(running, 60)

    assert [r.status for r in results] == [ExecutionStatus.SUCCESS] * 2
    assert notes[0] == f"no worker is alive on queue {real_settings.queue_name}"
    assert notes[-1] == ""  # the last report, after the worker started, says nothing is wrong
