"""ProjectOrchestrator on the embedded backend (fakeredis and in-process workers, offline provider)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis.exceptions import ConnectionError as RedisConnectionError

import coditect.client.orchestrator as orchestrator
from coditect.agents import AgentRegistry
from coditect.client.orchestrator import BatchProgress, ProjectOrchestrator, dependency_waves
from coditect.engine.embedded import EmbeddedBackend
from coditect.errors import TaskInputError
from coditect.jobs import EMBEDDED_KEY, SETTINGS_KEY, worker_options
from coditect.keys import job_id_for
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.settings import Settings
from tests.support.fake_backend import FakeBackend, wait_until

SUCCESS, FAILED = ExecutionStatus.SUCCESS, ExecutionStatus.FAILED


@pytest.fixture
def orch_settings(settings: Settings, tmp_path: Path) -> Settings:
    agents_file = tmp_path / "agents.json"
    # "broken" fails at once, on the worker as in the orchestrator's checks: api mode without an endpoint
    agents_file.write_text(json.dumps({"agents": [{"name": "broken", "mode": "api"}]}))
    return settings.model_copy(
        update={
            "offline_latency_s": 0.02,
            "agents_file": agents_file,
            "embedded_workers": 2,
            "poll_interval_s": 0.02,
            "max_tries": 1,
        }
    )


@pytest.fixture
async def orch(orch_settings: Settings) -> AsyncIterator[ProjectOrchestrator]:
    async with ProjectOrchestrator(orch_settings) as orch:
        yield orch


def tasks(count: int, prefix: str = "t", **fields: Any) -> list[AgentTask]:
    return [AgentTask(id=f"{prefix}{i}", title=f"task {prefix}{i}", **fields) for i in range(count)]


async def job_keys(redis: ArqRedis) -> list[bytes]:
    return list(await redis.keys("arq:job:*"))


# -- running tasks --------------------------------------------------------------------------------


async def test_execute_task_by_id_and_with_an_agent_override(orch: ProjectOrchestrator) -> None:
    await orch.add_tasks([AgentTask(id="t1", title="Write a haiku")])

    plain = await orch.execute_task("t1")
    as_writer = await orch.execute_task("t1", agent="writer")

    assert (plain.task_id, plain.status, plain.agent, plain.provider) == ("t1", SUCCESS, "default", "offline")
    assert "Write a haiku" in plain.output
    assert plain.attempts == 1
    assert (as_writer.status, as_writer.agent) == (SUCCESS, "writer")
    assert as_writer.output != plain.output, "the writer's system prompt changes the offline answer"


async def test_execute_tasks_parallel_returns_results_in_input_order(orch: ProjectOrchestrator) -> None:
    registered = tasks(6)
    await orch.add_tasks(registered)
    inline = AgentTask(id="inline", title="not registered, passed as a task")
    order: list[str | AgentTask] = ["t5", "t0", inline, "t3", "t1", "t4", "t2"]

    results = await orch.execute_tasks_parallel(order)

    assert [r.task_id for r in results] == ["t5", "t0", "inline", "t3", "t1", "t4", "t2"]
    assert all(r.status is SUCCESS for r in results)
    assert all(r.output.endswith(f"task {r.task_id}") for r in results if r.task_id != "inline")


async def test_tasks_run_in_dependency_waves(orch: ProjectOrchestrator) -> None:
    batch = [
        AgentTask(id="c", title="third", depends_on=["b"]),
        AgentTask(id="a", title="first"),
        AgentTask(id="b", title="second", depends_on=["a"]),
        AgentTask(id="d", title="independent"),
    ]

    results = {r.task_id: r for r in await orch.run_batch(batch)}

    assert all(r.status is SUCCESS for r in results.values())
    for before, after in (("a", "b"), ("b", "c")):
        finished, started = results[before].finished_at, results[after].started_at
        assert finished is not None
        assert started is not None
        assert started >= finished, f"{after} started before {before} finished"


async def test_dependants_of_a_failed_task_are_skipped(orch: ProjectOrchestrator) -> None:
    batch = [
        AgentTask(id="bad", title="fails", agent="broken"),
        AgentTask(id="dep", title="needs bad", depends_on=["bad"]),
        AgentTask(id="grand", title="needs dep", depends_on=["dep"]),
        AgentTask(id="ok", title="independent"),
        AgentTask(id="after-ok", title="needs ok", depends_on=["ok"]),
    ]

    results = {r.task_id: r for r in await orch.run_batch(batch, batch_id="deps")}

    assert results["bad"].status is FAILED
    assert "needs an 'endpoint' URL" in (results["bad"].error or "")
    for task_id, dependency in (("dep", "bad"), ("grand", "dep")):
        skipped = results[task_id]
        assert (skipped.status, skipped.attempts) == (ExecutionStatus.CANCELLED, 0)
        assert skipped.error == f"not run: dependency {dependency} did not succeed"
        assert not await orch.redis.exists(f"arq:result:{job_id_for('deps', task_id)}"), "never enqueued"
    assert (results["ok"].status, results["after-ok"].status) == (SUCCESS, SUCCESS)


def test_dependency_waves_keep_input_order_within_a_wave() -> None:
    batch = [
        AgentTask(id="z", title="z", depends_on=["y", "x"]),
        AgentTask(id="y", title="y"),
        AgentTask(id="w", title="w", depends_on=["y"]),
        AgentTask(id="x", title="x"),
    ]

    waves = dependency_waves(batch)

    assert [[t.id for t in wave] for wave in waves] == [["y", "x"], ["z", "w"]]
    assert dependency_waves([]) == []


# -- refused input --------------------------------------------------------------------------------

Call = Callable[[ProjectOrchestrator], Awaitable[object]]
A, B = AgentTask(id="a", title="a"), AgentTask(id="b", title="b")
C_NEEDS_D = AgentTask(id="c", title="c", depends_on=["d"])
D_NEEDS_C = AgentTask(id="d", title="d", depends_on=["c"])


@pytest.mark.parametrize(
    ("call", "field", "message"),
    [
        (lambda o: o.execute_task("nope"), "id", "unknown task 'nope'"),
        (lambda o: o.execute_task("a", agent="ghost"), "tasks[0].agent", "unknown agent 'ghost'"),
        (lambda o: o.add_tasks([AgentTask(id="x", title="x", agent="ghost")]), "x.agent", "unknown agent"),
        (lambda o: o.execute_tasks_parallel([A, B, A]), "tasks[2].id", "appears more than once"),
        (
            lambda o: o.run_batch([A, AgentTask(id="c", title="c", depends_on=["nope"])]),
            "tasks[1].depends_on",
            "unknown task id 'nope'",
        ),
        (
            lambda o: o.run_batch([A, C_NEEDS_D, D_NEEDS_C]),
            "depends_on",
            "dependency cycle among tasks c, d",
        ),
        (lambda o: o.execute_tasks_parallel([A], batch_id="a:b"), "batch_id", "use 1-64 letters"),
        (lambda o: o.submit([A, AgentTask(id="c", title="c", depends_on=["a"])]), "depends_on", "run_batch"),
        (lambda o: o.results("never-submitted"), "batch", "no batch 'never-submitted'"),
        (lambda o: o.cancel("never-submitted"), "batch", "no batch 'never-submitted'"),
    ],
    ids=[
        "unknown-id", "unknown-agent", "add-unknown-agent", "repeated-id", "unknown-dependency", "cycle",
        "batch-id-colon", "submit-with-dependencies", "results-unknown-batch", "cancel-unknown-batch",
    ],
)  # fmt: skip
async def test_invalid_input_is_refused_naming_the_field_and_nothing_is_enqueued(
    orch: ProjectOrchestrator, call: Call, field: str, message: str
) -> None:
    await orch.add_tasks([A])

    with pytest.raises(TaskInputError) as caught:
        await call(orch)

    assert caught.value.field == field
    assert message in str(caught.value)
    assert await job_keys(orch.redis) == []
    assert await orch.redis.zcard(orch.settings.queue_name) == 0


# -- deadlines, cancellation, status --------------------------------------------------------------


async def test_a_batch_timeout_reports_unfinished_tasks_and_cancels_them(orch_settings: Settings) -> None:
    slow = orch_settings.model_copy(update={"offline_latency_s": 30.0, "max_jobs": 2, "embedded_workers": 1})
    async with ProjectOrchestrator(slow) as orch:
        started = time.monotonic()

        results = await orch.execute_tasks_parallel(tasks(4), batch_id="slow", timeout_s=0.3)

        assert time.monotonic() - started < 3
        assert [(r.status, r.attempts) for r in results] == [(ExecutionStatus.TIMEOUT, 0)] * 4
        assert all("batch slow timed out" in (r.error or "") for r in results)
        redis = orch.redis
        await wait_until(lambda: _zero(redis.zcard(slow.queue_name)), what="the queue to empty")
        in_redis = await orch.results("slow")
        assert [r.status for r in in_redis] == [ExecutionStatus.CANCELLED] * 4
        assert await job_keys(redis) == []


async def test_results_and_cancel_of_a_submitted_batch(orch_settings: Settings) -> None:
    slow = orch_settings.model_copy(update={"offline_latency_s": 30.0, "max_jobs": 1, "embedded_workers": 1})
    async with ProjectOrchestrator(slow) as orch:
        batch_id = await orch.submit(tasks(2), batch_id="sub", name="two slow ones")
        job_ids = [job_id_for("sub", t.id) for t in tasks(2)]
        await wait_until(lambda: orch.store.count_running(job_ids), what="one task to start")

        before = await orch.results(batch_id)
        counts = await orch.cancel(batch_id)
        await wait_until(lambda: _all_found(orch, job_ids), what="both cancelled results")
        after = await orch.results(batch_id)

    assert batch_id == "sub"
    assert [r.task_id for r in before] == ["t0", "t1"]
    assert sorted(r.status for r in before) == sorted([ExecutionStatus.RUNNING, ExecutionStatus.QUEUED])
    assert counts == (1, 1)
    assert [(r.task_id, r.status) for r in after] == [
        ("t0", ExecutionStatus.CANCELLED),
        ("t1", ExecutionStatus.CANCELLED),
    ]


async def test_results_of_a_finished_batch(orch: ProjectOrchestrator) -> None:
    await orch.execute_tasks_parallel(tasks(2), batch_id="done")

    assert [(r.task_id, r.status) for r in await orch.results("done")] == [("t0", SUCCESS), ("t1", SUCCESS)]


async def test_progress_snapshots_end_with_everything_done(orch: ProjectOrchestrator) -> None:
    snapshots: list[BatchProgress] = []
    batch = [*tasks(4), AgentTask(id="bad", title="fails", agent="broken")]

    results = await orch.execute_tasks_parallel(batch, on_progress=snapshots.append)

    assert [r.status for r in results] == [SUCCESS] * 4 + [FAILED]
    assert snapshots, "at least the final snapshot"
    final = snapshots[-1]
    assert (final.total, final.done, final.running, final.failed, final.queued) == (5, 5, 0, 1, 0)
    assert all(s.total == 5 for s in snapshots)
    assert [s.done for s in snapshots] == sorted(s.done for s in snapshots)
    assert all(0 <= s.running <= s.total - s.done for s in snapshots)
    assert final.elapsed_s >= 0


async def test_jobs_lost_by_redis_are_enqueued_again(
    orch_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(orchestrator, "FULL_CHECK_INTERVAL_S", 0.05)
    not_started: list[EmbeddedBackend] = []

    class WorkersLater(EmbeddedBackend):
        async def start(self) -> None:
            not_started.append(self)

    monkeypatch.setattr(orchestrator, "EmbeddedBackend", WorkersLater)
    queue = orch_settings.queue_name
    caplog.set_level(logging.WARNING, logger="coditect.client.orchestrator")
    async with ProjectOrchestrator(orch_settings) as orch:
        redis = orch.redis
        running = asyncio.create_task(orch.execute_tasks_parallel(tasks(3), batch_id="lost"))
        await wait_until(lambda: _equal(redis.zcard(queue), 3), what="the batch to be enqueued")
        job_ids = [job_id_for("lost", t.id) for t in tasks(3)]
        async with redis.pipeline(transaction=True) as pipe:  # Redis restarts without its data
            pipe.delete(*(f"arq:job:{job_id}" for job_id in job_ids))
            pipe.zrem(queue, *job_ids)
            await pipe.execute()

        await EmbeddedBackend.start(not_started[0])
        async with asyncio.timeout(10):
            results = await running

    assert [(r.task_id, r.status) for r in results] == [("t0", SUCCESS), ("t1", SUCCESS), ("t2", SUCCESS)]
    assert "batch lost: 3 job(s) were lost by Redis; enqueued again" in caplog.text


async def test_an_orchestrator_with_a_redis_url_uses_the_workers_already_running(
    orch_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[int] = []
    async with FakeBackend(orch_settings.queue_name) as backend:

        async def fake_pool(settings: Settings, *, conn_retries: int = 5) -> ArqRedis:
            opened.append(conn_retries)
            return backend.pool(track=False)  # the orchestrator closes it

        monkeypatch.setattr(orchestrator, "create_redis_pool", fake_pool)
        tuned = orch_settings.model_copy(update={"embedded_workers": 1})
        backend.worker(**worker_options(tuned), ctx={SETTINGS_KEY: tuned, EMBEDDED_KEY: True})

        async with ProjectOrchestrator(tuned, redis_url="redis://redis.example:6379") as orch:
            results = await orch.execute_tasks_parallel(tasks(2))

    assert orch.settings.redis_url == "redis://redis.example:6379"
    assert opened == [1], "one quick connection attempt, not ARQ's five"
    assert [r.status for r in results] == [SUCCESS, SUCCESS]


async def test_a_submitted_batch_can_be_awaited_with_progress(orch: ProjectOrchestrator) -> None:
    snapshots: list[BatchProgress] = []
    batch_id = await orch.submit(tasks(3))

    results = await orch.wait(batch_id, ["t0", "t1", "t2"], on_progress=snapshots.append)

    assert sorted(results) == ["t0", "t1", "t2"]
    assert all(r.status is SUCCESS for r in results.values())
    assert (snapshots[-1].total, snapshots[-1].done) == (3, 3)


async def test_a_redis_outage_while_a_batch_runs_is_ridden_out(
    orch: ProjectOrchestrator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = orch.store
    real_enqueue, real_wait_done = store.enqueue, store.wait_done
    failed: list[str] = []

    async def enqueue(*args: Any, **kwargs: Any) -> int:
        if "enqueue" not in failed:
            failed.append("enqueue")
            raise RedisConnectionError("Connection reset by peer")
        return await real_enqueue(*args, **kwargs)

    async def wait_done(*args: Any, **kwargs: Any) -> list[str]:
        if "wait_done" not in failed:
            failed.append("wait_done")
            raise RedisConnectionError("Connection reset by peer")
        return await real_wait_done(*args, **kwargs)

    monkeypatch.setattr(store, "enqueue", enqueue)
    monkeypatch.setattr(store, "wait_done", wait_done)
    caplog.set_level(logging.WARNING, logger="coditect.client.orchestrator")

    results = await orch.execute_tasks_parallel(tasks(3))

    assert [r.status for r in results] == [SUCCESS] * 3
    assert failed == ["enqueue", "wait_done"]
    assert caplog.text.count("Redis unreachable (Connection reset by peer); trying again in 0.05 s") == 2


# -- life cycle -----------------------------------------------------------------------------------


async def test_using_an_orchestrator_that_is_not_open_raises_a_clear_error(orch_settings: Settings) -> None:
    orch = ProjectOrchestrator(orch_settings, agents=AgentRegistry())

    with pytest.raises(
        RuntimeError, match=r"open the orchestrator first: async with ProjectOrchestrator\(\)"
    ):
        await orch.execute_tasks_parallel([A])
    with pytest.raises(RuntimeError, match="open the orchestrator first"):
        _ = orch.redis
    await orch.close()  # closing one never opened is harmless


async def test_an_open_orchestrator_cannot_be_opened_again(orch: ProjectOrchestrator) -> None:
    with pytest.raises(RuntimeError, match="already open"):
        await orch.open()


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def _equal(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def _all_found(orch: ProjectOrchestrator, job_ids: list[str]) -> bool:
    found: dict[str, ExecutionResult] = await orch.store.fetch_results(job_ids)
    return len(found) == len(job_ids)
