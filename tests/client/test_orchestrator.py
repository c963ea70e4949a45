"""ProjectOrchestrator on the embedded backend (fakeredis and in-process workers, offline provider)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis.exceptions import ConnectionError as RedisConnectionError

import coditect.client.orchestrator as orchestrator
from coditect.agents import AgentRegistry
from coditect.client.orchestrator import BatchProgress, ProjectOrchestrator
from coditect.client.waiter import RESULTS_WITH_EVENTS_MAX, BatchWaiter
from coditect.errors import ConfigurationError, TaskInputError
from coditect.models import AgentConfig, AgentTask, ExecutionResult, ExecutionStatus
from coditect.settings import Settings
from tests.support.fake_backend import wait_until

SUCCESS, FAILED = ExecutionStatus.SUCCESS, ExecutionStatus.FAILED
CANCELLED, TIMEOUT = ExecutionStatus.CANCELLED, ExecutionStatus.TIMEOUT
PYTHON_AGENTS = "tests.support.python_agents"


@pytest.fixture
def orch_settings(settings: Settings, tmp_path: Path) -> Settings:
    agents_file = tmp_path / "agents.json"
    agents = [
        # "broken" fails at once, on the worker: api mode without an endpoint
        {"name": "broken", "mode": "api"},
        {"name": "planner", "mode": "python", "entrypoint": f"{PYTHON_AGENTS}:planner"},
        {"name": "llm-planner", "mode": "python", "entrypoint": f"{PYTHON_AGENTS}:planner_with_llm"},
        {"name": "recursive", "mode": "python", "entrypoint": f"{PYTHON_AGENTS}:recursive"},
        {"name": "sleeper", "mode": "python", "entrypoint": f"{PYTHON_AGENTS}:sleeper"},
    ]
    agents_file.write_text(json.dumps({"agents": agents}))
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


async def test_a_dependant_starts_as_soon_as_its_dependency_succeeds(orch: ProjectOrchestrator) -> None:
    """A (20 ms) -> B, beside an independent C (1 s): B starts right after A, not after C."""
    batch = [
        AgentTask(id="a", title="first"),
        AgentTask(id="b", title="second", depends_on=["a"]),
        AgentTask(id="c", title="independent", agent="sleeper", metadata={"seconds": 1.0}),
    ]

    results = {r.task_id: r for r in await orch.run_batch(batch)}

    a, b, c = results["a"], results["b"], results["c"]
    assert a.finished_at is not None
    assert b.started_at is not None
    assert c.finished_at is not None
    assert a.finished_at <= b.started_at < c.finished_at, "B ran while C was still running"
    assert (b.started_at - a.finished_at).total_seconds() < 0.5


async def test_a_dependant_receives_its_dependencies_outputs_in_its_prompt(orch: ProjectOrchestrator) -> None:
    batch = [
        AgentTask(id="facts", title="List the facts"),
        AgentTask(id="essay", title="Write the essay", depends_on=["facts"]),
    ]

    facts, essay = await orch.run_batch(batch)

    assert essay.status is SUCCESS
    # The offline provider counts the prompt's tokens: the essay's prompt holds the facts' output.
    alone = await orch.run_batch([AgentTask(id="alone", title="Write the essay")])
    assert essay.usage.input_tokens > alone[0].usage.input_tokens + len(facts.output) // 8


async def test_dependants_of_a_failed_task_are_cancelled_transitively(orch: ProjectOrchestrator) -> None:
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
        assert (skipped.status, skipped.attempts) == (CANCELLED, 0)
        assert skipped.error == f"not run: dependency {dependency} did not succeed"
    assert (results["ok"].status, results["after-ok"].status) == (SUCCESS, SUCCESS)


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
        (lambda o: o.submit([A, C_NEEDS_D, D_NEEDS_C]), "depends_on", "dependency cycle among tasks c, d"),
        (lambda o: o.execute_tasks_parallel([A], batch_id="a:b"), "batch_id", "use 1-64 letters"),
        (lambda o: o.results("never-submitted"), "batch", "no batch 'never-submitted'"),
        (lambda o: o.cancel("never-submitted"), "batch", "no batch 'never-submitted'"),
        (lambda o: o.wait("never-submitted"), "batch", "no batch 'never-submitted'"),
        (lambda o: o.summary("never-submitted"), "batch", "no batch 'never-submitted'"),
    ],
    ids=[
        "unknown-id", "unknown-agent", "add-unknown-agent", "repeated-id", "unknown-dependency", "cycle",
        "batch-id-colon", "results-unknown-batch", "cancel-unknown-batch", "wait-unknown-batch",
        "summary-unknown-batch",
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


# -- submit and leave; follow from anywhere -------------------------------------------------------


async def test_a_batch_with_dependencies_can_be_submitted_and_followed_by_another_orchestrator(
    orch: ProjectOrchestrator, orch_settings: Settings
) -> None:
    batch = [AgentTask(id="a", title="a"), AgentTask(id="b", title="b", depends_on=["a"])]
    batch_id = await orch.submit(batch, batch_id="left", name="submitted and left")
    snapshots: list[BatchProgress] = []

    results = await orch.wait(batch_id, on_progress=snapshots.append)

    assert [(r.task_id, r.status) for r in results] == [("a", SUCCESS), ("b", SUCCESS)]
    assert (snapshots[-1].total, snapshots[-1].done) == (2, 2)
    summary = await orch.summary("left")
    assert (summary.name, summary.finished, summary.counts["success"]) == ("submitted and left", True, 2)
    assert [s.id for s in await orch.batches()] == ["left"]


async def test_as_completed_yields_each_result_once_as_tasks_end(orch: ProjectOrchestrator) -> None:
    batch_id = await orch.submit(tasks(20))

    seen = [result.task_id async for result in orch.as_completed(batch_id)]

    assert sorted(seen) == sorted(t.id for t in tasks(20))
    again = [result.task_id async for result in orch.as_completed(batch_id)]  # a finished batch
    assert sorted(again) == sorted(seen)


async def test_events_of_a_batch_are_complete_and_in_order(orch_settings: Settings) -> None:
    retrying = orch_settings.model_copy(update={"max_tries": 2, "retry_backoff_s": 0})
    agents = AgentRegistry(
        [AgentConfig(name="default"), AgentConfig(name="flaky", mode="api", endpoint="http://127.0.0.1:1/x")]
    )
    async with ProjectOrchestrator(retrying, agents=agents) as orch:
        await orch.run_batch(
            [AgentTask(id="ok", title="fine"), AgentTask(id="flaky", title="unreachable", agent="flaky")],
            batch_id="ev",
        )
        events = [event async for event in orch.events("ev", follow=False)]
        everything = [event async for event in orch.events(follow=False)]

    flow = [(event.type, event.task_id, event.attempt) for event in events]
    assert flow[0] == ("batch.submitted", None, None)
    assert flow[-1] == ("batch.finished", None, None)
    ok = [entry for entry in flow if entry[1] == "ok"]
    assert ok == [("task.queued", "ok", 0), ("task.started", "ok", 1), ("task.succeeded", "ok", 1)]
    flaky = [entry for entry in flow if entry[1] == "flaky"]
    assert flaky == [
        ("task.queued", "flaky", 0), ("task.started", "flaky", 1), ("task.retrying", "flaky", 1),
        ("task.started", "flaky", 2), ("task.failed", "flaky", 2),
    ]  # fmt: skip
    assert [event.id for event in events] == sorted(event.id for event in events)
    failed = next(event for event in events if event.type == "task.failed")
    assert "cannot reach" in failed.data["error"]
    assert failed.worker
    succeeded = next(event for event in events if event.type == "task.succeeded")
    assert succeeded.data["in"] > 0
    assert succeeded.data["duration"] >= 0
    assert "output" not in succeeded.data
    assert "title" not in json.dumps(succeeded.to_json_dict())
    in_all = [(event.type, event.task_id, event.attempt) for event in everything if event.batch_id == "ev"]
    assert in_all == flow, "the stream of all batches has the same events, in the same order"


async def test_events_since_an_id_are_only_the_later_ones(orch: ProjectOrchestrator) -> None:
    await orch.run_batch(tasks(2), batch_id="since")
    events = [event async for event in orch.events("since", follow=False)]

    later = [event async for event in orch.events("since", events[2].id, follow=False)]

    assert [event.id for event in later] == [event.id for event in events[3:]]


async def test_a_batch_id_that_exists_with_other_tasks_is_refused(orch: ProjectOrchestrator) -> None:
    await orch.run_batch(tasks(2), batch_id="taken")
    again = await orch.run_batch(tasks(2), batch_id="taken")  # the same batch: followed, not re-run

    with pytest.raises(TaskInputError, match=r"batch 'taken' exists with other tasks .*'x0'") as caught:
        await orch.run_batch(tasks(1, prefix="x"), batch_id="taken")

    assert caught.value.field == "batch_id"
    assert [r.status for r in again] == [SUCCESS, SUCCESS]
    assert (await orch.summary("taken")).total == 2


# -- deadlines, cancellation, status --------------------------------------------------------------


async def test_a_batch_timeout_ends_unfinished_tasks_as_timeout_and_results_agree(
    orch_settings: Settings,
) -> None:
    slow = orch_settings.model_copy(update={"offline_latency_s": 30.0, "max_jobs": 2, "embedded_workers": 1})
    async with ProjectOrchestrator(slow) as orch:
        started = time.monotonic()

        results = await orch.execute_tasks_parallel(tasks(4), batch_id="slow", timeout_s=0.3)

        assert time.monotonic() - started < 5
        assert [r.status for r in results] == [TIMEOUT] * 4
        assert all("batch slow timed out" in (r.error or "") for r in results)
        later = await orch.results("slow")
        assert [r.status for r in later] == [TIMEOUT] * 4, "results say what run said"
        assert await job_keys(orch.redis) == []


async def test_cancel_of_a_submitted_batch_ends_queued_waiting_and_running_tasks(
    orch_settings: Settings,
) -> None:
    slow = orch_settings.model_copy(update={"offline_latency_s": 30.0, "max_jobs": 1, "embedded_workers": 1})
    async with ProjectOrchestrator(slow) as orch:
        batch = [*tasks(2), AgentTask(id="after", title="after", depends_on=["t0"])]
        batch_id = await orch.submit(batch, batch_id="sub")
        await wait_until(lambda: _running(orch, batch_id), what="one task to start")

        before = await orch.results(batch_id)
        counts = await orch.cancel(batch_id)
        after = await orch.wait(batch_id)

    assert [r.status for r in before] == [
        ExecutionStatus.RUNNING,
        ExecutionStatus.QUEUED,
        ExecutionStatus.PENDING,
    ]
    assert counts == (1, 1, 1)
    assert [(r.task_id, r.status, r.error) for r in after] == [
        ("t0", CANCELLED, "cancelled by user"), ("t1", CANCELLED, "cancelled by user"),
        ("after", CANCELLED, "cancelled by user"),
    ]  # fmt: skip


async def _running(orch: ProjectOrchestrator, batch_id: str) -> bool:
    summary = await orch.summary(batch_id)
    return summary.counts["running"] == 1


async def test_progress_counts_each_final_status_apart(orch: ProjectOrchestrator) -> None:
    snapshots: list[BatchProgress] = []
    batch = [
        *tasks(3),
        AgentTask(id="bad", title="fails", agent="broken"),
        AgentTask(id="x", title="x", depends_on=["bad"]),
    ]

    results = await orch.execute_tasks_parallel(batch, on_progress=snapshots.append)

    assert [r.status for r in results] == [SUCCESS] * 3 + [FAILED, CANCELLED]
    final = snapshots[-1]
    assert (final.total, final.done, final.succeeded, final.failed, final.cancelled) == (5, 5, 3, 1, 1)
    assert [s.done for s in snapshots] == sorted(s.done for s in snapshots)


async def test_a_redis_outage_while_a_batch_runs_is_ridden_out(
    orch: ProjectOrchestrator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = orch.store
    real_submit, real_next_events = store.submit, BatchWaiter._next_events
    failed: list[str] = []

    async def submit(*args: Any, **kwargs: Any) -> Any:
        if "submit" not in failed:
            failed.append("submit")
            raise RedisConnectionError("Connection reset by peer")
        return await real_submit(*args, **kwargs)

    # The waiter of a batch that ends quickly reads no counters: the outage hits its reads of events.
    async def next_events(*args: Any, **kwargs: Any) -> Any:
        if "events" not in failed:
            failed.append("events")
            raise RedisConnectionError("Connection reset by peer")
        return await real_next_events(*args, **kwargs)

    monkeypatch.setattr(store, "submit", submit)
    monkeypatch.setattr(BatchWaiter, "_next_events", next_events)
    caplog.set_level(logging.WARNING, logger="coditect.backoff")

    results = await orch.execute_tasks_parallel(tasks(3))

    assert [r.status for r in results] == [SUCCESS] * 3
    assert failed == ["submit", "events"]
    assert caplog.text.count("Redis unreachable (Connection reset by peer)") == 2


async def test_a_small_batchs_results_come_with_its_events_and_a_large_ones_after_them(
    orch: ProjectOrchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = orch.store
    real_fetch = store.fetch_results
    fetched: list[int] = []

    async def fetch_results(batch_id: str, task_ids: Sequence[str]) -> dict[str, ExecutionResult]:
        fetched.append(len(task_ids))
        return await real_fetch(batch_id, task_ids)

    monkeypatch.setattr(store, "fetch_results", fetch_results)

    small = await orch.execute_tasks_parallel(tasks(3))
    assert [r.status for r in small] == [SUCCESS] * 3
    assert fetched == []  # read in the same round trip as the events that said they ended

    large = [AgentTask(id=f"l{i}", title=f"l{i}") for i in range(RESULTS_WITH_EVENTS_MAX + 1)]
    results = await orch.execute_tasks_parallel(large)
    assert [r.task_id for r in results] == [task.id for task in large]
    assert sum(fetched) == len(large)


async def test_a_batch_that_redis_lost_is_enqueued_again_by_its_submitter(orch: ProjectOrchestrator) -> None:
    slow_first = [AgentTask(id="t0", title="t0"), AgentTask(id="t1", title="t1", depends_on=["t0"])]
    run = asyncio.create_task(orch.run_batch(slow_first, batch_id="lost"))
    await wait_until(lambda: orch.store.exists("lost"), what="the batch recorded")
    await orch.redis.flushall()  # Redis restarts without its data

    results = await asyncio.wait_for(run, 10)

    assert [(r.task_id, r.status) for r in results] == [("t0", SUCCESS), ("t1", SUCCESS)]


# -- delegation -----------------------------------------------------------------------------------


async def test_a_python_agent_delegates_to_other_agents_and_gets_their_results(
    orch: ProjectOrchestrator,
) -> None:
    (parent,) = await orch.run_batch(
        [AgentTask(id="plan", title="Write a guide", agent="planner")], batch_id="dg"
    )

    assert (parent.status, parent.output) == (SUCCESS, "plan.1=success | plan.2=success")
    results = {r.task_id: r for r in await orch.results("dg")}
    assert set(results) == {"plan", "plan.1", "plan.2"}
    assert results["plan.1"].agent == "writer"
    summary = await orch.summary("dg")
    assert (summary.total, summary.counts["success"]) == (3, 3)
    assert summary.totals["in"] >= results["plan.1"].usage.input_tokens + results["plan.2"].usage.input_tokens


async def test_a_python_agent_plans_with_its_model_then_delegates(orch: ProjectOrchestrator) -> None:
    (parent,) = await orch.run_batch([AgentTask(id="p", title="Plan it", agent="llm-planner")])

    assert (parent.status, parent.output) == (SUCCESS, "p.draft:success")
    assert parent.usage.input_tokens > 0, "the planning call's tokens count"
    assert parent.usage.output_tokens > 1


async def test_delegation_depth_is_bounded_with_a_clear_error(orch_settings: Settings) -> None:
    shallow = orch_settings.model_copy(update={"max_delegation_depth": 2})
    async with ProjectOrchestrator(shallow) as orch:
        (root,) = await orch.run_batch([AgentTask(id="r", title="go", agent="recursive")], batch_id="deep")
        ids = [r.task_id for r in await orch.results("deep")]

    assert root.status is SUCCESS
    assert (
        root.output == "depth 2: not run: delegation depth 3 is over CODITECT_MAX_DELEGATION_DEPTH (2); "
        "task r.1.1 may not delegate further"
    )
    assert ids == ["r", "r.1", "r.1.1"]


async def test_parents_waiting_for_children_never_starve_the_worker_pool(orch_settings: Settings) -> None:
    """Every slot can hold a waiting parent: a waiting parent gives its slot back."""
    tight = orch_settings.model_copy(update={"embedded_workers": 1, "max_jobs": 2})
    parents = [AgentTask(id=f"p{i}", title=f"guide {i}", agent="planner") for i in range(10)]
    async with ProjectOrchestrator(tight) as orch:
        results = await asyncio.wait_for(orch.run_batch(parents, batch_id="pool"), 30)
        summary = await orch.summary("pool")

    assert all(r.status is SUCCESS for r in results)
    assert (summary.total, summary.counts["success"]) == (30, 30)


# -- what a new user hits (issue 8) -----------------------------------------------------------------


async def test_the_embedded_workers_use_the_orchestrators_own_agents(settings: Settings) -> None:
    agents = AgentRegistry([AgentConfig(name="custom", system_prompt="Only mine.")])
    async with ProjectOrchestrator(settings, agents=agents) as orch:
        (result,) = await orch.run_batch([AgentTask(title="x", agent="custom")])

    assert (result.status, result.agent) == (SUCCESS, "custom")


async def test_embedded_workers_that_cannot_start_fail_the_orchestrator_at_once(settings: Settings) -> None:
    keyless = settings.model_copy(update={"llm_provider": "anthropic"})

    with pytest.raises(ConfigurationError, match="needs an API key"):
        async with asyncio.timeout(10), ProjectOrchestrator(keyless):
            pass


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


def test_module_exports() -> None:
    assert {"ProjectOrchestrator", "BatchProgress", "BatchLost", "DeadlineReached"} <= set(
        orchestrator.__all__
    )
