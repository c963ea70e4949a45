"""What a worker process tells the outside: Prometheus metrics scraped over HTTP from a worker started
with ``--metrics-port``, and JSON log lines (``CODITECT_LOG_FORMAT=json``) read from its stderr. Real
worker processes, the fake provider as a process, the real Anthropic SDK.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.settings import Settings
from tests.support.faults import eventually
from tests.support.provider_process import TEST_API_KEY, provider_process, write_json
from tests.support.workers import WorkerProcess

StartWorkers = Callable[..., Any]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

pytestmark = pytest.mark.timeout(90)

MODEL = "fake-sonnet"
UNKNOWN_MODEL = "mystery-model-9"
SLEEP_S = 7  # longer than the gauges' refresh period (5 s): one refresh sees the sleeper running
AGENTS = {
    "agents": [
        {"name": "priced", "provider": "anthropic", "model": MODEL, "system_prompt": "Answer in one line."},
        {"name": "mystery", "provider": "anthropic", "model": UNKNOWN_MODEL},
        {"name": "sleeper", "mode": "python", "entrypoint": "tests.support.python_agents:sleeper"},
    ]
}
PRICES = {
    "prices": [
        {
            "model": MODEL,
            "input_usd_per_mtok": 3.0,
            "output_usd_per_mtok": 15.0,
            "cache_read_usd_per_mtok": 0.3,
            "cache_write_usd_per_mtok": 3.75,
        }
    ]
}


def files(tmp_path: Path, settings: Settings) -> tuple[dict[str, str], Settings]:
    agents = write_json(tmp_path / "agents.json", AGENTS)
    prices = write_json(tmp_path / "prices.json", PRICES)
    # 300 a minute: calls 0.2 s apart, so back-to-back tasks wait for capacity, without their slot for
    # all but the last 0.1 s.
    limits = write_json(
        tmp_path / "limits.json",
        {"limits": [{"provider": "anthropic", "model": MODEL, "requests_per_minute": 300}]},
    )
    env = {
        "CODITECT_AGENTS_FILE": str(agents),
        "CODITECT_PRICES_FILE": str(prices),
        "CODITECT_LIMITS_FILE": str(limits),
        "CODITECT_RETRY_BACKOFF_S": "0.05",
        # Capacity more than 0.3 s away sends the task back to the queue (a deferral) instead.
        "CODITECT_RATE_LIMIT_HORIZON_S": "0.3",
    }
    return env, settings.model_copy(update={"agents_file": agents})


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


async def scrape(http: httpx.AsyncClient) -> Samples:
    reply = await http.get("/metrics")
    reply.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def total(results: list[ExecutionResult], field: str) -> int:
    return sum(getattr(result.usage, field) for result in results)


async def test_metrics_scraped_over_http_from_a_worker_with_a_metrics_port(
    real_settings: Settings, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env, settings = files(tmp_path, real_settings)
    async with provider_process() as provider:
        command = [sys.executable, "-m", "coditect", "worker", "--metrics-port", "0"]
        worker = WorkerProcess({**worker_env, **provider.worker_env(**env, CODITECT_MAX_JOBS="1")}, command)
        await worker.start()
        try:
            (port,) = [int(m[1]) for line in worker.lines if (m := re.search(r"metrics on port (\d+)", line))]
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
                ProjectOrchestrator(settings) as orch,
            ):
                # One slot, held by a sleeper; three tasks submitted meanwhile wait in the queue.
                sleeper = AgentTask(id="z", title="sleep", agent="sleeper", metadata={"seconds": SLEEP_S})
                await orch.submit([sleeper], batch_id="slow")
                await eventually(
                    lambda: _running(orch, "slow"), timeout_s=10, what="the sleeper to start", interval_s=0.05
                )
                waiting = [AgentTask(id=f"w{n}", title=f"Waiting {n}", agent="priced") for n in range(3)]
                await orch.submit(waiting, batch_id="queued")
                busy = await eventually(
                    lambda: _gauges(http, in_flight=1, queue_depth=3),
                    timeout_s=SLEEP_S,
                    what="gauges showing 1 task in flight and 3 waiting",
                    interval_s=0.1,
                )
                results = [*await orch.wait("slow", timeout_s=30), *await orch.wait("queued", timeout_s=30)]
                await provider.plan(status=500)  # the next call fails once: its task is retried
                results += await orch.run_batch(
                    [AgentTask(id=f"p{n}", title=f"Priced {n}", agent="priced") for n in range(5)],
                    batch_id="priced",
                    timeout_s=30,
                )
                results += await orch.run_batch(
                    [AgentTask(id=f"m{n}", title=f"Unpriced {n}", agent="mystery") for n in range(2)],
                    batch_id="mystery",
                    timeout_s=30,
                )
                # A budget of 1 token: the first task runs, the other two end cancelled without running.
                budgeted = [AgentTask(id=f"b{n}", title=f"Budgeted {n}", agent="priced") for n in range(3)]
                results += await orch.run_batch(budgeted, batch_id="budget", budget_tokens=1, timeout_s=30)
                # A running task aborted by a cancel: the engine ends it, not the job function.
                doomed = AgentTask(id="d", title="sleep", agent="sleeper", metadata={"seconds": 60})
                await orch.submit([doomed], batch_id="doomed")
                await eventually(
                    lambda: _running(orch, "doomed"),
                    timeout_s=10,
                    what="the doomed task to start",
                    interval_s=0.05,
                )
                await orch.cancel("doomed")
                results += await orch.wait("doomed", timeout_s=30)
                idle = await eventually(
                    lambda: _gauges(http, in_flight=0, queue_depth=0),
                    timeout_s=10,
                    what="gauges back to 0",
                    interval_s=0.1,
                )
                got = await scrape(http)
        finally:
            await worker.stop()

    statuses = Counter(f"{result.agent} {result.status.value}" for result in results)
    print(f"\n[metrics] results: {dict(statuses)}")
    print(f"[metrics] while the sleeper ran: {busy}; after: {idle}")
    print(
        "[metrics] "
        + "\n[metrics] ".join(
            f"{name}{dict(sorted(lab))} {value}"
            for (name, lab), value in got.items()
            if name.startswith("coditect_") and not name.endswith(("_bucket", "_created"))
        )
    )
    priced = [r for r in results if r.agent == "priced" and r.status is ExecutionStatus.SUCCESS]
    mystery = [r for r in results if r.agent == "mystery"]
    assert [r.status for r in results].count(ExecutionStatus.CANCELLED) == 3
    assert len(priced) == 3 + 5 + 1
    tasks = "coditect_tasks_total"
    assert got[(tasks, labels(status="success", agent="priced", provider="anthropic", model=MODEL))] == 9
    assert (
        got[(tasks, labels(status="success", agent="mystery", provider="anthropic", model=UNKNOWN_MODEL))]
        == 2
    )
    assert got[(tasks, labels(status="success", agent="sleeper", provider="python", model=""))] == 1
    assert got[(tasks, labels(status="cancelled", agent="priced", provider="", model=""))] == 2
    assert got[(tasks, labels(status="cancelled", agent="sleeper", provider="", model=""))] == 1
    counted = sum(value for (name, _), value in got.items() if name == tasks)
    assert counted == len(results)  # every task that ended, once
    duration = "coditect_task_duration_seconds"
    assert got[(f"{duration}_count", labels(agent="sleeper", status="success"))] == 1
    assert got[(f"{duration}_sum", labels(agent="sleeper", status="success"))] >= SLEEP_S
    assert got[(f"{duration}_count", labels(agent="priced", status="success"))] == 9
    assert got[("coditect_task_retries_total", labels(agent="priced"))] == 1
    kinds = ("input", "output", "cache_read", "cache_write")
    for kind in kinds:
        field = f"{kind}_tokens"
        sample = ("coditect_tokens_total", labels(kind=kind, provider="anthropic", model=MODEL))
        assert got[sample] == total(priced, field), kind
    assert total(priced, "cache_read_tokens") > 0  # the priced agent's system prompt, read from the cache
    assert got[
        ("coditect_tokens_total", labels(kind="input", provider="anthropic", model=UNKNOWN_MODEL))
    ] == total(mystery, "input_tokens")
    cost = got[("coditect_cost_usd_total", labels(provider="anthropic", model=MODEL))]
    assert cost == pytest.approx(sum(r.cost_usd or 0.0 for r in priced))
    assert cost > 0
    assert got[("coditect_tasks_unpriced_total", labels(provider="anthropic", model=UNKNOWN_MODEL))] == 2
    waited = got[("coditect_rate_limit_wait_seconds_total", labels(provider="anthropic", model=MODEL))]
    assert waited > 0.2  # back-to-back calls 0.2 s apart: several waited
    # With one slot, a task waiting for capacity frees it; the next task claimed finds its capacity
    # further away than the horizon and goes back to the queue for that long.
    deferrals = got[("coditect_rate_limit_deferrals_total", labels(provider="anthropic", model=MODEL))]
    deferred_s = got[
        ("coditect_rate_limit_deferred_seconds_total", labels(provider="anthropic", model=MODEL))
    ]
    assert deferrals >= 1
    assert deferred_s > 0.3 * deferrals


async def _running(orch: ProjectOrchestrator, batch_id: str) -> bool:
    return (await orch.summary(batch_id)).counts["running"] == 1


async def _gauges(http: httpx.AsyncClient, *, in_flight: int, queue_depth: int) -> dict[str, float] | None:
    got = await scrape(http)
    values = {
        "in_flight": got[("coditect_tasks_in_flight", frozenset())],
        "queue_depth": got[("coditect_queue_depth", frozenset())],
    }
    return values if values == {"in_flight": in_flight, "queue_depth": queue_depth} else None


@pytest.mark.parametrize(
    "command", [None, [sys.executable, "-m", "coditect", "worker"]], ids=["arq", "coditect-worker"]
)
async def test_json_log_lines_carry_the_jobs_fields_and_no_secret(
    real_settings: Settings, worker_env: dict[str, str], tmp_path: Path, command: list[str] | None
) -> None:
    env, settings = files(tmp_path, real_settings)
    async with provider_process() as provider:
        json_env = provider.worker_env(**env, CODITECT_LOG_FORMAT="json", CODITECT_WORKER_NAME="json-worker")
        worker = WorkerProcess({**worker_env, **json_env}, command)
        await worker.start()
        try:
            # A provider error that echoes the key it was sent: the retry's log line quotes the error.
            await provider.plan(status=500, message=f"upstream refused key {TEST_API_KEY}")
            async with ProjectOrchestrator(settings) as orch:
                results = await orch.run_batch(
                    [
                        AgentTask(id="t1", title="First", agent="priced"),
                        AgentTask(id="t2", title="Second", agent="priced"),
                    ],
                    batch_id="logged",
                    timeout_s=30,
                )
        finally:
            await worker.stop()

    print(f"\n[json logs] {len(worker.lines)} lines:\n" + "\n".join(worker.lines))
    assert [r.status for r in results] == [ExecutionStatus.SUCCESS] * 2
    entries = []
    for line in worker.lines:
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    in_jobs = [
        entry for entry in entries if "coditect:logged:" in entry["message"] or "retrying" in entry["message"]
    ]
    assert len(in_jobs) >= 5  # each task's start and end (one task twice), and the retry
    for entry in in_jobs:
        task = entry["task_id"]
        assert entry["batch_id"] == "logged", entry
        assert task in ("t1", "t2"), entry
        assert entry["job_id"] == f"coditect:logged:{task}", entry
        assert entry["worker"] == "json-worker", entry
        assert isinstance(entry["attempt"], int), entry
    (retry,) = [entry for entry in in_jobs if entry["logger"] == "coditect.jobs"]
    retried = retry["task_id"]
    assert retry["attempt"] == 1
    assert "retrying in" in retry["message"]
    second_start = [e for e in in_jobs if e["task_id"] == retried and "try=2" in e["message"]]
    # (A start sent back to the queue for capacity starts again, as try 2 still.)
    assert second_start
    assert {entry["attempt"] for entry in second_start} == {2}
    outside = [entry for entry in entries if entry not in in_jobs]
    assert all("job_id" not in entry for entry in outside)
    text = "\n".join(worker.lines)
    leaked = [
        TEST_API_KEY[i : i + 8] for i in range(len(TEST_API_KEY) - 7) if TEST_API_KEY[i : i + 8] in text
    ]
    assert leaked == []
