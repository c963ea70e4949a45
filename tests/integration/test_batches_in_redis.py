"""Batches that live in Redis (issue 10), with a real redis-server and real worker processes:
dependencies driven by the workers, Ctrl-C and cancel mid-graph, delegation without deadlock and
across a worker's death, and a batch's events."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings
from tests.support.faults import NO_LEFTOVERS, eventually, leftovers

StartWorkers = Callable[..., Any]
SUCCESS, CANCELLED = ExecutionStatus.SUCCESS, ExecutionStatus.CANCELLED
AGENTS = "tests.support.python_agents"


@pytest.fixture
def agents_file(tmp_path: Path) -> Path:
    path = tmp_path / "agents.json"
    agents = [
        {"name": "sleeper", "mode": "python", "entrypoint": f"{AGENTS}:sleeper"},
        {"name": "planner", "mode": "python", "entrypoint": f"{AGENTS}:planner"},
        {"name": "slow-planner", "mode": "python", "entrypoint": f"{AGENTS}:slow_planner", "timeout_s": 60},
    ]
    path.write_text(json.dumps({"agents": agents}))
    return path


@pytest.fixture
def settings(real_settings: Settings, agents_file: Path) -> Settings:
    return real_settings.model_copy(update={"agents_file": agents_file})


def sleeper(task_id: str, seconds: float, *deps: str, **metadata: Any) -> AgentTask:
    return AgentTask(
        id=task_id,
        title=task_id,
        agent="sleeper",
        depends_on=list(deps),
        metadata={"seconds": seconds, **metadata},
    )


def ledger_starts(ledger: Path) -> list[tuple[str, int]]:
    if not ledger.exists():
        return []
    return [(task, int(pid)) for task, pid in (line.split() for line in ledger.read_text().splitlines())]


async def test_a_dependant_starts_right_after_its_dependency_not_after_the_slowest_task(
    settings: Settings, start_workers: StartWorkers, agents_file: Path
) -> None:
    """A (1 s) -> B, and an independent C (3 s): B must start right after A, not after C."""
    await start_workers(2, CODITECT_AGENTS_FILE=str(agents_file))
    async with ProjectOrchestrator(settings) as orch:
        a, b, c = await orch.run_batch(
            [sleeper("a", 1), sleeper("b", 0.1, "a"), sleeper("c", 3)], batch_id="asap"
        )

    assert (a.status, b.status, c.status) == (SUCCESS, SUCCESS, SUCCESS)
    assert a.finished_at is not None
    assert b.started_at is not None
    assert c.finished_at is not None
    hop = (b.started_at - a.finished_at).total_seconds()
    assert 0 <= hop < 0.5, f"B started {hop:.3f} s after A finished"
    assert b.started_at < c.finished_at, "B did not wait for C"


async def test_ctrl_c_of_run_mid_graph_leaves_a_batch_that_watch_follows_to_the_end(
    settings: Settings,
    start_workers: StartWorkers,
    agents_file: Path,
    tmp_path: Path,
    worker_env: dict[str, str],
) -> None:
    await start_workers(1, CODITECT_AGENTS_FILE=str(agents_file))
    graph = [sleeper("first", 1), sleeper("second", 0.2, "first"), sleeper("third", 0.2, "second")]
    path = tmp_path / "graph.json"
    path.write_text(json.dumps({"name": "graph", "tasks": [task.model_dump(mode="json") for task in graph]}))
    env = {**worker_env, "CODITECT_AGENTS_FILE": str(agents_file)}
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coditect", "run", str(path), "--batch-id", "interrupted", "--json",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with ProjectOrchestrator(settings) as orch:
        try:
            await eventually(
                lambda: _running(orch, "interrupted", "first"), timeout_s=15, what="first to run"
            )
        finally:
            run.send_signal(signal.SIGINT)
            _, run_err = await asyncio.wait_for(run.communicate(), 15)
        assert run.returncode == 130, run_err.decode()
        assert run_err.decode().strip() == "coditect: error: interrupted"

        watch = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coditect", "watch", "interrupted", "--json", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(watch.communicate(), 30)

    assert watch.returncode == 0, err.decode()
    assert [(item["task_id"], item["status"]) for item in json.loads(out)] == [
        ("first", "success"), ("second", "success"), ("third", "success"),
    ]  # fmt: skip


async def _running(orch: ProjectOrchestrator, batch_id: str, task_id: str) -> bool:
    if not await orch.store.exists(batch_id):
        return False
    return (await orch.store.states(batch_id)).get(task_id) is ExecutionStatus.RUNNING


async def test_cancel_mid_graph_ends_every_task_and_nothing_runs_afterwards(
    settings: Settings, start_workers: StartWorkers, agents_file: Path, tmp_path: Path, redis_url: str
) -> None:
    import redis.asyncio

    ledger = tmp_path / "ledger"
    await start_workers(1, CODITECT_AGENTS_FILE=str(agents_file))
    graph = [
        sleeper("a", 2, ledger=str(ledger)),
        sleeper("b", 0.1, "a", ledger=str(ledger)),
        sleeper("c", 0.1, "b", ledger=str(ledger)),
    ]
    async with ProjectOrchestrator(settings) as orch:
        await orch.submit(graph, batch_id="stop")
        await eventually(lambda: _running(orch, "stop", "a"), timeout_s=15, what="a to run")

        counts = await orch.cancel("stop")
        results = await asyncio.wait_for(orch.wait("stop"), 15)
        events = [event.type async for event in orch.events("stop", follow=False)]

    assert counts == (0, 2, 1)
    assert [(r.task_id, r.status, r.error) for r in results] == [
        ("a", CANCELLED, "cancelled by user"), ("b", CANCELLED, "cancelled by user"),
        ("c", CANCELLED, "cancelled by user"),
    ]  # fmt: skip
    assert [task for task, _ in ledger_starts(ledger)] == ["a"], "nothing started after the cancel"
    assert events[-1] == "batch.finished"
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        assert await leftovers(client) == NO_LEFTOVERS


@pytest.mark.timeout(120)
async def test_fifty_parents_each_delegating_two_children_complete_on_two_workers_of_two_slots(
    settings: Settings, start_workers: StartWorkers, agents_file: Path
) -> None:
    await start_workers(2, CODITECT_AGENTS_FILE=str(agents_file), CODITECT_MAX_JOBS="2")
    parents = [AgentTask(id=f"p{i}", title=f"guide {i}", agent="planner") for i in range(50)]
    async with ProjectOrchestrator(settings) as orch:
        results = await asyncio.wait_for(orch.run_batch(parents, batch_id="fan"), 90)
        summary = await orch.summary("fan")

    assert [r.status for r in results] == [SUCCESS] * 50
    assert all(r.output == f"{r.task_id}.1=success | {r.task_id}.2=success" for r in results)
    assert (summary.total, summary.counts["success"]) == (150, 150)


@pytest.mark.timeout(90)
async def test_a_parent_whose_worker_dies_finds_its_children_instead_of_starting_them_again(
    settings: Settings, start_workers: StartWorkers, agents_file: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    env = {"CODITECT_AGENTS_FILE": str(agents_file), "CODITECT_LEASE_S": "2"}
    (victim,) = await start_workers(1, **env)
    parent = AgentTask(
        id="plan", title="plan", agent="slow-planner", metadata={"seconds": 3, "ledger": str(ledger)}
    )
    async with ProjectOrchestrator(settings) as orch:
        await orch.submit([parent], batch_id="orphan")
        await eventually(
            lambda: _at_least_started(ledger, {"plan", "plan.1", "plan.2"}),
            timeout_s=15,
            what="children running",
        )
        (survivor,) = await start_workers(1, **env)
        assert await victim.kill() == -signal.SIGKILL
        results = {r.task_id: r for r in await asyncio.wait_for(orch.wait("orphan"), 60)}
        events = [event async for event in orch.events("orphan", follow=False)]

    assert set(results) == {"plan", "plan.1", "plan.2"}, "the re-run parent delegated no new children"
    assert all(r.status is SUCCESS for r in results.values()), results
    assert results["plan"].attempts == 2
    starts = ledger_starts(ledger)
    assert [pid for task, pid in starts if task == "plan"] == [victim.pid, survivor.pid]
    for child in ("plan.1", "plan.2"):
        runs = [pid for task, pid in starts if task == child]
        # a child runs again only if it was on the worker that died, never because its parent ran again
        assert runs in ([victim.pid], [victim.pid, survivor.pid], [survivor.pid]), (child, runs)
    finals = Counter(event.task_id for event in events if event.is_final)
    assert finals == {"plan": 1, "plan.1": 1, "plan.2": 1}, "one final result per task"


async def _at_least_started(ledger: Path, tasks: set[str]) -> bool:
    return tasks <= {task for task, _ in ledger_starts(ledger)}


async def test_events_of_a_batch_with_a_retry_and_a_failure_are_complete_and_in_order(
    settings: Settings, start_workers: StartWorkers, agents_file: Path, tmp_path: Path
) -> None:
    flaky = tmp_path / "agents-flaky.json"
    agents = json.loads(await asyncio.to_thread(agents_file.read_text))["agents"]
    agents.append({"name": "unreachable", "mode": "api", "endpoint": "http://127.0.0.1:1/run"})
    flaky.write_text(json.dumps({"agents": agents}))
    await start_workers(
        1, CODITECT_AGENTS_FILE=str(flaky), CODITECT_MAX_TRIES="2", CODITECT_RETRY_BACKOFF_S="0"
    )
    tasks = [sleeper("ok", 0.1), AgentTask(id="bad", title="bad", agent="unreachable")]
    async with ProjectOrchestrator(settings.model_copy(update={"agents_file": flaky})) as orch:
        await orch.run_batch(tasks, batch_id="told")
        events = [event async for event in orch.events("told", follow=False)]

    flow = [(event.type, event.task_id, event.attempt) for event in events]
    assert flow[0] == ("batch.submitted", None, None)
    assert flow[-1] == ("batch.finished", None, None)
    assert [entry for entry in flow if entry[1] == "bad"] == [
        ("task.queued", "bad", 0), ("task.started", "bad", 1), ("task.retrying", "bad", 1),
        ("task.started", "bad", 2), ("task.failed", "bad", 2),
    ]  # fmt: skip
    assert [entry for entry in flow if entry[1] == "ok"] == [
        ("task.queued", "ok", 0), ("task.started", "ok", 1), ("task.succeeded", "ok", 1),
    ]  # fmt: skip
    assert [event.id for event in events] == sorted(event.id for event in events)
    assert {event.worker for event in events if event.task_id} - {None} != set()
