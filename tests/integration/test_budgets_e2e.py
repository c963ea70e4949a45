"""Batch budgets end to end: real worker processes, the fake provider (a process) through the real
Anthropic SDK, a batch that runs out of its budget mid-way, through the API and ``coditect run``.

Each task is a python agent making two model calls, so it spends about twice the one-call estimate it
reserved before starting. With 4 worker slots the first four tasks reserve 4 estimates and start; the
tasks claimed while they run find no room and come back after 1 s; once the spending reaches the
budget, every task that would start ends ``cancelled`` ("budget exhausted: ..."), while the ones
running finish. What a batch may spend, as the README says: its budget, plus one estimate (a task is
admitted when nothing else holds a reservation and the budget is not yet spent), plus what admitted
tasks spent beyond their estimates.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coditect.client.events import Event
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus, TokenUsage
from coditect.settings import Settings
from tests.support.provider_process import ProviderProcess, provider_process, run_cli, write_json
from tests.support.workers import WorkerProcess

StartWorkers = Callable[..., Any]

pytestmark = pytest.mark.timeout(90)

MODEL = "fake-opus"
PRICES = {
    "prices": [
        {
            "model": MODEL,
            "input_usd_per_mtok": 300.0,
            "output_usd_per_mtok": 1500.0,
            "cache_read_usd_per_mtok": 30.0,
            "cache_write_usd_per_mtok": 375.0,
        }
    ]
}
AGENTS = {
    "agents": [
        {
            "name": "spender",
            "mode": "python",
            "entrypoint": "tests.support.python_agents:several_calls",
            "provider": "anthropic",
            "model": MODEL,
            "max_tokens": 4,
        },
        {
            "name": "retried",
            "mode": "python",
            "entrypoint": "tests.support.python_agents:flaky_after_llm",
            "provider": "anthropic",
            "model": MODEL,
            "max_tokens": 4,
        },
    ]
}
# Every title is 8 characters. Estimate (one call): ceil(8 / 4) + 4 = 6 tokens in, max_tokens 4 out:
# (6 x 300 + 4 x 1500) / 1e6 = $0.0078, 10 tokens. Each call as the fake counts it: (8 + 3) // 4 + 3 = 5
# in, "echo: Spend 01" 4 out: $0.0075, 9 tokens; two calls a task: $0.015, 18 tokens.
ESTIMATE_USD, ESTIMATE_TOKENS = 0.0078, 10
TASK_USD, TASK_TOKENS = 0.015, 18
BUDGET_USD = 0.0375  # two and a half tasks; four estimates ($0.0312) fit
BUDGET_TOKENS = 45  # the same in tokens; four estimates (40) fit
COUNT = 24


def spenders() -> list[AgentTask]:
    return [AgentTask(id=f"s{n:02d}", title=f"Spend {n:02d}", agent="spender") for n in range(1, COUNT + 1)]


async def setup(
    tmp_path: Path, settings: Settings, start_workers: StartWorkers, provider: ProviderProcess
) -> tuple[Settings, dict[str, str], list[WorkerProcess]]:
    """Two workers of 2 slots each; the agents file for the orchestrator and the command line."""
    agents = write_json(tmp_path / "agents.json", AGENTS)
    prices = write_json(tmp_path / "prices.json", PRICES)
    env = {"CODITECT_AGENTS_FILE": str(agents), "CODITECT_PRICES_FILE": str(prices)}
    workers = await start_workers(2, **provider.worker_env(**env, CODITECT_MAX_JOBS="2"))
    return settings.model_copy(update={"agents_file": agents}), env, workers


def spent_when_crossed(
    events: list[Event], budget: float, spend: Callable[[Event], float]
) -> tuple[int, int]:
    """(successes up to and including the one that reached ``budget``, successes after it)."""
    succeeded = [event for event in events if event.type == "task.succeeded"]
    total = 0.0
    for index, event in enumerate(succeeded):
        total += spend(event)
        if total >= budget:
            return index + 1, len(succeeded) - index - 1
    raise AssertionError(f"the budget was never reached: {total} of {budget}")


def check_outcome(results: list[ExecutionResult], reason: str) -> tuple[list[ExecutionResult], set[str]]:
    """Successes spent two calls each; every other task ended cancelled, unrun, with ``reason``."""
    done = [result for result in results if result.status is ExecutionStatus.SUCCESS]
    refused = [result for result in results if result.status is not ExecutionStatus.SUCCESS]
    assert len(done) >= 3, results  # the budget is two and a half tasks
    assert refused, "the budget ran out mid-batch: some tasks never started"
    for result in done:
        assert result.usage == TokenUsage(input_tokens=10, output_tokens=8)
        assert result.cost_usd == pytest.approx(TASK_USD)
    errors = set()
    for result in refused:
        assert result.status is ExecutionStatus.CANCELLED, result
        assert re.fullmatch(reason, result.error or ""), result.error
        assert (result.attempts, result.usage.total_tokens, result.cost_usd) == (0, 0, None)
        errors.add(result.error or "")
    return done, errors


async def test_a_usd_budget_runs_out_mid_batch(
    real_settings: Settings, start_workers: StartWorkers, tmp_path: Path
) -> None:
    async with provider_process("--latency-s", "0.3") as provider:
        settings, _, workers = await setup(tmp_path, real_settings, start_workers, provider)
        async with ProjectOrchestrator(settings) as orch:
            results = await orch.run_batch(spenders(), batch_id="usd", budget_usd=BUDGET_USD, timeout_s=60)
            summary = await orch.summary("usd")
            events = [event async for event in orch.events("usd", follow=False)]
        calls = len(await provider.requests())

    done, errors = check_outcome(results, r"budget exhausted: \$0\.(\d{4}) of \$0\.0375 spent")
    crossed, finished_after = spent_when_crossed(events, BUDGET_USD, lambda event: float(event.data["cost"]))
    spent = summary.totals["cost"]
    bound = BUDGET_USD + ESTIMATE_USD + len(done) * (TASK_USD - ESTIMATE_USD)
    print(f"\n[budget usd] {len(done)} succeeded, {COUNT - len(done)} cancelled; {calls} calls; {errors}")
    print(f"[budget usd] spent ${spent:.4f} of ${BUDGET_USD}; bound ${bound:.4f}")
    print(f"[budget usd] the budget was reached by success {crossed}; {finished_after} running then finished")
    assert calls == 2 * len(done)
    assert spent == pytest.approx(len(done) * TASK_USD)
    assert BUDGET_USD <= spent <= bound
    assert all(float(re.findall(r"\d+\.\d+", error)[0]) >= BUDGET_USD for error in errors)
    assert finished_after >= 1  # tasks running when the budget was reached finished
    assert summary.counts == {
        "pending": 0, "queued": 0, "running": 0, "success": len(done), "failed": 0, "timeout": 0,
        "cancelled": COUNT - len(done),
    }  # fmt: skip
    assert summary.cancelled is not None
    assert summary.cancelled in errors
    assert summary.totals["unpriced"] == 0  # unrun tasks have no price to miss
    # The workers say why tasks ended unrun, and that any they sent back waited for the budget (whether
    # one is sent back depends on when the first four finish: tests/engine/test_jobrun.py has the line).
    lines = [line for worker in workers for line in worker.lines]
    assert any("refused by its batch's budget, not run: budget exhausted: $" in line for line in lines)
    assert not any("waiting for capacity" in line for line in lines)


async def test_a_token_budget_runs_out_mid_batch(
    real_settings: Settings, start_workers: StartWorkers, tmp_path: Path
) -> None:
    async with provider_process("--latency-s", "0.3") as provider:
        settings, _, _ = await setup(tmp_path, real_settings, start_workers, provider)
        async with ProjectOrchestrator(settings) as orch:
            results = await orch.run_batch(
                spenders(), batch_id="tokens", budget_tokens=BUDGET_TOKENS, timeout_s=60
            )
            summary = (await orch.summary("tokens")).to_json_dict()
            events = [event async for event in orch.events("tokens", follow=False)]

    done, errors = check_outcome(results, r"budget exhausted: (\d+) of 45 tokens spent")
    crossed, finished_after = spent_when_crossed(
        events, BUDGET_TOKENS, lambda event: int(event.data["in"]) + int(event.data["out"])
    )
    spent = sum(summary["usage"].values())
    bound = BUDGET_TOKENS + ESTIMATE_TOKENS + len(done) * (TASK_TOKENS - ESTIMATE_TOKENS)
    print(f"\n[budget tokens] {len(done)} succeeded, {COUNT - len(done)} cancelled; {errors}")
    print(f"[budget tokens] spent {spent} of {BUDGET_TOKENS} tokens; bound {bound}")
    print(f"[budget tokens] reached by success {crossed}; {finished_after} running then finished")
    assert spent == len(done) * TASK_TOKENS
    assert BUDGET_TOKENS <= spent <= bound
    assert all(int(re.findall(r"\d+", error)[0]) >= BUDGET_TOKENS for error in errors)
    assert finished_after >= 1
    assert summary["counts"]["cancelled"] == COUNT - len(done)


async def test_coditect_run_with_a_budget_exits_1_and_says_so(
    real_settings: Settings, start_workers: StartWorkers, worker_env: dict[str, str], tmp_path: Path
) -> None:
    tasks = [task.model_dump(mode="json", include={"id", "title", "agent"}) for task in spenders()]
    plain = write_json(tmp_path / "plain.json", {"name": "spend", "tasks": tasks})
    in_file = write_json(
        tmp_path / "budgeted.json", {"name": "spend", "budget_tokens": BUDGET_TOKENS, "tasks": tasks}
    )
    async with provider_process("--latency-s", "0.3") as provider:
        _, env, _ = await setup(tmp_path, real_settings, start_workers, provider)
        cli_env = {**worker_env, **env, "COLUMNS": "200"}
        by_flag = await run_cli(
            ["run", str(plain), "--budget-usd", str(BUDGET_USD), "--batch-id", "flag"], cli_env
        )
        by_file = await run_cli(["run", str(in_file), "--batch-id", "file", "--json"], cli_env)
        status = await run_cli(["status", "file", "--json"], cli_env)

    print(f"\n[budget cli] run --budget-usd: exit {by_flag.code}\n{by_flag.stdout}")
    assert by_flag.code == 1, by_flag.stderr
    assert re.search(r"cancelled .*budget exhausted: \$0\.\d{4} of \$0\.0375 spent", by_flag.stdout)
    assert re.search(r"success", by_flag.stdout)
    assert by_file.code == 1, by_file.stderr
    statuses = {item["status"] for item in by_file.json()}
    assert statuses == {"success", "cancelled"}
    assert all(
        re.fullmatch(r"budget exhausted: \d+ of 45 tokens spent", item["error"])
        for item in by_file.json()
        if item["status"] == "cancelled"
    )
    assert status.code == 1
    assert status.json()["cancelled"].startswith("budget exhausted: ")


async def test_a_task_refused_after_a_retry_still_counts_what_its_first_attempt_spent(
    real_settings: Settings, start_workers: StartWorkers, tmp_path: Path
) -> None:
    """One worker slot: "a-retried" runs first (job ids sort so), calls the model, fails and goes back
    for at least 1.5 s (the backoff); "b-spender" runs meanwhile and spends past the budget; then
    "a-retried" is refused by the budget, and its first attempt's call is in its result and the totals."""
    agents = write_json(tmp_path / "agents.json", AGENTS)
    prices = write_json(tmp_path / "prices.json", PRICES)
    ledger = tmp_path / "failed-once"
    tasks = [
        AgentTask(id="a-retried", title="Spend 01", agent="retried", metadata={"ledger": str(ledger)}),
        AgentTask(id="b-spender", title="Spend 02", agent="spender"),
    ]
    async with provider_process() as provider:
        env = {"CODITECT_AGENTS_FILE": str(agents), "CODITECT_PRICES_FILE": str(prices)}
        await start_workers(
            1, **provider.worker_env(**env, CODITECT_MAX_JOBS="1", CODITECT_RETRY_BACKOFF_S="2")
        )
        settings = real_settings.model_copy(update={"agents_file": agents})
        async with ProjectOrchestrator(settings) as orch:
            results = await orch.run_batch(tasks, batch_id="retried", budget_usd=0.01, timeout_s=30)
            summary = await orch.summary("retried")
        served = await provider.served()

    retried, spender = results
    print(f"\n[budget retried] {[(r.task_id, r.status.value, r.usage, r.cost_usd) for r in results]}")
    print(f"[budget retried] totals {summary.totals}")
    assert spender.status is ExecutionStatus.SUCCESS
    assert retried.status is ExecutionStatus.CANCELLED
    assert (retried.error or "").startswith("budget exhausted: ")
    assert retried.attempts == 1
    assert retried.usage == TokenUsage(input_tokens=5, output_tokens=4)  # its first attempt's one call
    assert (retried.provider, retried.model) == ("anthropic", MODEL)
    assert retried.cost_usd == pytest.approx(0.0075)
    assert len(served) == 3
    assert summary.totals["in"] + summary.totals["out"] == sum(
        s["input_tokens"] + s["output_tokens"] for s in served
    )
    assert summary.totals["cost"] == pytest.approx(TASK_USD + 0.0075)
    assert summary.by_agent["retried"]["cost"] == pytest.approx(0.0075)
