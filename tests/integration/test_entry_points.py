"""The ways to start a worker, as real processes on the suite's own redis-server: ``arq
coditect.jobs.WorkerSettings``, ``arq`` with a subclass of it, ``arq --check``, ``coditect worker
--check``, and a plain ``arq.worker.Worker`` built from coditect's settings (refused)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from arq.connections import ArqRedis

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.connections import create_redis_pool
from coditect.keys import job_id_for
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings
from tests.support.faults import eventually, held_by, run_command
from tests.support.workers import ARQ_BIN, WorkerProcess

StartWorkers = Callable[..., Any]

SUBCLASS_MODULE = '''
"""A project's own worker settings: coditect's, plus a function, a cron job and a start-up hook."""
from arq.cron import cron

from coditect.jobs import EXECUTOR_KEY, WorkerSettings as CoditectWorkerSettings


async def shout(ctx, text):
    return {"shouted": text.upper(), "try": ctx["job_try"]}


async def tick(ctx):
    await ctx["redis"].incr("tests_module:ticks")


async def remember_start(ctx):
    # coditect's own start-up ran first: its executor is there for this hook to use.
    await ctx["redis"].set("tests_module:started", "executor" if EXECUTOR_KEY in ctx else "none")


class WorkerSettings(CoditectWorkerSettings):
    functions = [shout]
    cron_jobs = [cron(tick, run_at_startup=True, month=1, day=1, hour=0, minute=0, second=0)]
    on_startup = remember_start
'''

PICKLING_MODULE = """
import pickle

from coditect.jobs import WorkerSettings as CoditectWorkerSettings


class WorkerSettings(CoditectWorkerSettings):
    job_serializer = pickle.dumps
"""

PLAIN_WORKER_SCRIPT = """
# ARQ's documented way to run a worker object, fed coditect's settings.
from arq.worker import Worker, get_kwargs

import coditect.jobs

Worker(**get_kwargs(coditect.jobs.WorkerSettings)).run()
"""


@pytest.fixture
def module_dir(tmp_path: Path, worker_env: dict[str, str]) -> Path:
    """A folder on the workers' PYTHONPATH for the test's own settings modules."""
    folder = tmp_path / "modules"
    folder.mkdir()
    worker_env["PYTHONPATH"] = f"{worker_env['PYTHONPATH']}:{folder}"
    return folder


@pytest.fixture
async def pool(real_settings: Settings) -> AsyncIterator[ArqRedis]:
    pool = await create_redis_pool(real_settings)
    yield pool
    await pool.aclose(close_connection_pool=True)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        yield client


def _has(worker: WorkerProcess, text: str) -> bool:
    return any(text in line for line in worker.lines)


async def _logged(worker: WorkerProcess, text: str) -> None:
    """Wait for a line the worker logs after its ready line."""

    async def found() -> bool:
        return _has(worker, text)

    await eventually(found, timeout_s=10, what=repr(text))


# -- arq coditect.jobs.WorkerSettings -------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_the_arq_command_runs_coditects_engine_and_a_killed_workers_task_reruns_after_one_lease(
    real_settings: Settings, start_workers: StartWorkers, client: redis.asyncio.Redis
) -> None:
    (victim,) = await start_workers(
        1, CODITECT_LEASE_S="1", CODITECT_JOB_TIMEOUT_S="600", CODITECT_OFFLINE_LATENCY_S="60"
    )
    assert _has(victim, "Starting worker for 1 functions: execute_task")  # ARQ's start lines
    assert _has(victim, "redis_version=")
    await _logged(victim, "engine: lease 1.0 s")  # CoditectWorker's, which a plain ARQ worker never logs
    async with ProjectOrchestrator(real_settings) as orch:
        await orch.submit([AgentTask(id="t1", title="held")], batch_id="lease")
        await eventually(lambda: held_by(client, victim.pid), timeout_s=10, what="the task to start")
        assert await victim.kill() == -signal.SIGKILL
        killed_at = time.monotonic()
        (survivor,) = await start_workers(1, CODITECT_LEASE_S="1", CODITECT_JOB_TIMEOUT_S="600")
        (result,) = await orch.wait("lease", timeout_s=20)
        recovered_in = time.monotonic() - killed_at

    assert result.status is ExecutionStatus.SUCCESS
    assert result.attempts == 2
    assert result.worker is not None
    assert result.worker.endswith(f":{survivor.pid}")
    # ARQ would wait for the job timeout (600 s + 5 s grace) before anyone else may run it.
    assert recovered_in < 10, recovered_in


# -- a subclass of coditect.jobs.WorkerSettings ---------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_subclass_started_by_arq_keeps_coditect_and_adds_its_function_cron_job_and_hook(
    real_settings: Settings,
    worker_env: dict[str, str],
    module_dir: Path,
    pool: ArqRedis,
    client: redis.asyncio.Redis,
) -> None:
    (module_dir / "tests_module.py").write_text(SUBCLASS_MODULE)
    worker = await WorkerProcess(worker_env, [ARQ_BIN, "tests_module.WorkerSettings"]).start()
    try:
        assert _has(worker, "Starting worker for 3 functions: execute_task, shout, cron:tick")
        await _logged(worker, "engine: lease")
        job = await pool.enqueue_job("shout", "hello", _queue_name=real_settings.queue_name)
        assert job is not None
        shouted = await job.result(timeout=10, poll_delay=0.01)
        raw = await client.get(f"arq:result:{job.job_id}")
        async with ProjectOrchestrator(real_settings) as orch:
            (task_result,) = await orch.run_batch([AgentTask(id="t1", title="through coditect")])
        ticks = await eventually(lambda: client.get("tests_module:ticks"), timeout_s=10, what="the cron tick")
        started = await client.get("tests_module:started")
    finally:
        await worker.stop()

    assert shouted == {"shouted": "HELLO", "try": 1}
    assert raw is not None
    assert raw.startswith(b"{"), "the result is coditect's JSON, not a pickle"
    assert task_result.status is ExecutionStatus.SUCCESS, "execute_task, on coditect's queue"
    assert task_result.output.endswith("through coditect")
    assert int(ticks) == 1
    assert started == b"executor", "both start-up hooks ran, coditect's first"
    assert _has(worker, "coditect worker ready")


async def test_a_subclass_that_sets_a_serializer_is_refused_when_its_class_is_made(
    worker_env: dict[str, str], module_dir: Path
) -> None:
    (module_dir / "pickling_module.py").write_text(PICKLING_MODULE)

    code, _, err = await run_command(ARQ_BIN, "pickling_module.WorkerSettings", env=worker_env)

    assert code != 0
    assert (
        "TypeError: WorkerSettings.job_serializer: coditect's jobs and results are JSON, so a subclass of "
        "coditect.jobs.WorkerSettings cannot change the serializer"
    ) in err.decode()


# -- health checks --------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_path", ["coditect.jobs.WorkerSettings", "tests_module.WorkerSettings"])
async def test_arq_check_reports_a_live_worker_and_then_none(
    worker_env: dict[str, str], module_dir: Path, settings_path: str
) -> None:
    (module_dir / "tests_module.py").write_text(SUBCLASS_MODULE)
    worker = await WorkerProcess(worker_env, [ARQ_BIN, settings_path]).start()

    alive, alive_out, alive_err = await run_command(ARQ_BIN, "--check", settings_path, env=worker_env)
    await worker.stop()
    gone, _, gone_err = await run_command(ARQ_BIN, "--check", settings_path, env=worker_env)

    assert alive == 0, (alive_out + alive_err).decode()
    assert "Health check successful" in alive_err.decode()
    assert gone == 1
    assert "Health check failed: no health check sentinel value found" in gone_err.decode()


async def test_coditect_worker_check_exits_0_with_a_live_worker_and_1_without(
    worker_env: dict[str, str], start_workers: StartWorkers
) -> None:
    command = [sys.executable, "-m", "coditect", "worker", "--check"]
    (worker,) = await start_workers(1)

    alive, alive_out, alive_err = await run_command(*command, env=worker_env)
    await worker.stop()
    gone, gone_out, _ = await run_command(*command, env=worker_env)

    assert alive == 0, (alive_out + alive_err).decode()
    assert f":{worker.pid}" in alive_out.decode()
    assert gone == 1
    assert "no worker is alive on queue coditect:queue" in gone_out.decode()


# -- a plain ARQ worker ---------------------------------------------------------------------------


async def test_a_plain_arq_worker_built_from_coditects_settings_fails_loudly_at_start(
    real_settings: Settings, worker_env: dict[str, str], tmp_path: Path, client: redis.asyncio.Redis
) -> None:
    script = tmp_path / "plain_worker.py"
    script.write_text(PLAIN_WORKER_SCRIPT)
    async with ProjectOrchestrator(real_settings) as orch:
        await orch.submit([AgentTask(id="t1", title="waits")], batch_id="plain")

    code, _, err = await run_command(sys.executable, str(script), env=worker_env)

    assert code != 0
    assert (
        "RuntimeError: coditect's job needs coditect's engine, but this is a plain arq.worker.Worker"
    ) in err.decode()
    assert await client.zscore(real_settings.queue_name, job_id_for("plain", "t1")) is not None, "not run"
    assert await client.exists(f"arq:retry:{job_id_for('plain', 't1')}") == 0, "not even claimed"
