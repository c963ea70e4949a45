"""Integrations that wrap ``arq.worker.Worker.run_job`` see every job CoditectWorker runs: sentry-sdk's
ARQ integration (in process, its envelopes kept in memory) and a hand-written wrapper (in a real
``arq`` process); a wrapper coditect cannot re-bind stops the worker at start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import arq.worker
import pytest
import redis.asyncio
import sentry_sdk
import sentry_sdk.integrations
from arq.connections import ArqRedis
from arq.worker import Worker
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.arq import ArqIntegration
from sentry_sdk.transport import Transport

from coditect.connections import create_redis_pool
from coditect.engine.arq_compat import install
from coditect.engine.worker import CoditectWorker
from coditect.jobs import EMBEDDED_KEY, JOB_NAME, SETTINGS_KEY, worker_settings_class
from coditect.models import AgentTask
from coditect.serialization import RemoteJobError
from coditect.settings import Settings
from tests.support.faults import eventually, run_command
from tests.support.workers import ARQ_BIN, WorkerProcess


class MemoryTransport(Transport):
    """Keeps every envelope sentry-sdk would send: no network."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [
            item.payload.json
            for envelope in self.envelopes
            for item in envelope.items
            if item.type == kind and item.payload.json is not None
        ]


@pytest.fixture
def sentry(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryTransport]:
    """sentry-sdk with its ARQ integration; every patch it makes to ARQ is undone after the test."""
    install()  # coditect's create_worker first, then sentry's around it: the documented order
    for owner, name in ((Worker, "run_job"), (arq.worker, "create_worker"), (ArqRedis, "enqueue_job")):
        monkeypatch.setattr(owner, name, getattr(owner, name))
    monkeypatch.setattr(sentry_sdk.integrations, "_installed_integrations", set())
    transport = MemoryTransport()
    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        transport=transport,
        integrations=[ArqIntegration()],
        default_integrations=False,
        auto_enabling_integrations=False,
        traces_sample_rate=1.0,
    )
    try:
        yield transport
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


async def boom(ctx: dict[str, Any]) -> None:
    raise ValueError("boom from a job")


@pytest.fixture
async def pool(real_settings: Settings) -> AsyncIterator[ArqRedis]:
    pool = await create_redis_pool(real_settings)
    yield pool
    await pool.aclose(close_connection_pool=True)


async def test_sentrys_arq_integration_traces_each_job_and_captures_a_jobs_exception(
    sentry: MemoryTransport, real_settings: Settings, pool: ArqRedis
) -> None:
    class Settings_(worker_settings_class(real_settings)):  # type: ignore[misc]
        functions = [boom]

    # As ARQ's CLI builds it: through arq.worker.create_worker, which both integrations wrap.
    worker = arq.worker.create_worker(
        Settings_, handle_signals=False, ctx={SETTINGS_KEY: real_settings, EMBEDDED_KEY: True}
    )
    assert isinstance(worker, CoditectWorker)
    run = asyncio.create_task(worker.async_run())
    try:
        task = AgentTask(id="t1", title="traced")
        ok = await pool.enqueue_job(JOB_NAME, task.model_dump_json(), _queue_name=real_settings.queue_name)
        failing = await pool.enqueue_job("boom", _queue_name=real_settings.queue_name)
        assert ok is not None
        assert failing is not None
        assert (await ok.result(timeout=10, poll_delay=0.01))["status"] == "success"
        with pytest.raises(RemoteJobError, match="ValueError: boom from a job"):
            await failing.result(timeout=10, poll_delay=0.01)
        await worker.close()
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    sentry_sdk.flush()

    transactions = sentry.events("transaction")
    assert {t["tags"]["arq_task_id"]: t["transaction"] for t in transactions} == {
        ok.job_id: JOB_NAME,
        failing.job_id: "boom",
    }
    assert {t["contexts"]["trace"]["op"] for t in transactions} == {"queue.task.arq"}
    (error,) = sentry.events("event")
    (exception,) = error["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("ValueError", "boom from a job")
    assert exception["mechanism"]["type"] == "arq"
    assert error["tags"]["arq_task_id"] == failing.job_id


# -- hand-written wrappers, in real arq processes -------------------------------------------------

TRACING_MODULE = '''
"""A wrapper of ARQ's run_job, installed before the worker is built, that lists every job it sees."""
from arq.worker import Worker

from coditect.jobs import WorkerSettings as CoditectWorkerSettings


def _trace(run_job):
    async def traced(self, job_id, score):
        await self.pool.rpush("traced", job_id)
        return await run_job(self, job_id, score)

    return traced


Worker.run_job = _trace(Worker.run_job)


class WorkerSettings(CoditectWorkerSettings):
    pass
'''

UNBINDABLE_MODULE = '''
"""A wrapper of ARQ's run_job that calls it through a module global: nothing coditect can re-bind."""
from arq.worker import Worker

from coditect.jobs import WorkerSettings as CoditectWorkerSettings

ORIGINAL = Worker.run_job


async def traced(self, job_id, score):
    return await ORIGINAL(self, job_id, score)


Worker.run_job = traced


class WorkerSettings(CoditectWorkerSettings):
    pass
'''


@pytest.fixture
def module_dir(tmp_path: Path, worker_env: dict[str, str]) -> Path:
    folder = tmp_path / "modules"
    folder.mkdir()
    worker_env["PYTHONPATH"] = f"{worker_env['PYTHONPATH']}:{folder}"
    return folder


async def test_a_hand_written_run_job_wrapper_sees_every_job_id(
    real_settings: Settings, worker_env: dict[str, str], module_dir: Path, pool: ArqRedis, redis_url: str
) -> None:
    (module_dir / "tracing_module.py").write_text(TRACING_MODULE)
    worker = await WorkerProcess(worker_env, [ARQ_BIN, "tracing_module.WorkerSettings"]).start()
    try:
        tasks = [AgentTask(id=f"t{i}", title="x").model_dump_json() for i in range(5)]
        jobs = [await pool.enqueue_job(JOB_NAME, t, _queue_name=real_settings.queue_name) for t in tasks]
        for job in jobs:
            assert job is not None
            assert (await job.result(timeout=10, poll_delay=0.01))["status"] == "success"
        async with redis.asyncio.Redis.from_url(redis_url) as client:
            traced = await eventually(
                lambda: _all(client, 5), timeout_s=5, what="the wrapper to record every job"
            )
    finally:
        await worker.stop()

    assert sorted(traced) == sorted(job.job_id for job in jobs if job is not None)


async def _all(client: redis.asyncio.Redis, count: int) -> list[str] | None:
    traced = [value.decode() for value in await client.lrange("traced", 0, -1)]  # type: ignore[misc]
    return traced if len(traced) >= count else None


async def test_a_run_job_wrapper_that_cannot_be_rebound_stops_the_worker_at_start(
    worker_env: dict[str, str], module_dir: Path
) -> None:
    (module_dir / "unbindable_module.py").write_text(UNBINDABLE_MODULE)

    code, _, err = await run_command(ARQ_BIN, "unbindable_module.WorkerSettings", env=worker_env)

    assert code != 0
    assert (
        "arq.worker.Worker.run_job was replaced by unbindable_module.traced, which coditect cannot apply to "
        "its engine (it does not call ARQ's run_job through a closure); without it that integration would "
        "see none of the jobs, so the worker does not start"
    ) in err.decode()
