"""Tokens and cost end to end: real worker processes call the fake provider (a process) through the real
Anthropic SDK; each result's ``usage`` and ``cost_usd`` and the batch's totals (``coditect status
--json``, ``coditect results --json``, the ``batch.finished`` event) match examples computed by hand.

The fake counts tokens as ``max(1, (characters + 3) // 4)`` per text, plus 3 per message; its reply
is ``"echo: " + the last user message``; its prompt cache holds the system prompt (the first call
writes it, later calls read it). Prices come from a ``CODITECT_PRICES_FILE`` for the fake's model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings
from tests.support.provider_process import provider_process, run_cli, write_json

StartWorkers = Callable[..., Any]

pytestmark = pytest.mark.timeout(90)

MODEL = "fake-sonnet"
UNKNOWN_MODEL = "mystery-model-9"
# US dollars per million tokens: input, output, cache read, cache write (Sonnet 4.5's list prices).
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
# 400 characters: (400 + 3) // 4 = 100 tokens in the fake's count.
SYSTEM = ("Answer in one short sentence, plainly, without any preamble. " * 7)[:400]
AGENTS = {
    "agents": [
        {"name": "pricer", "provider": "anthropic", "model": MODEL},
        {
            "name": "retrier",
            "mode": "python",
            "entrypoint": "tests.support.python_agents:flaky_after_llm",
            "provider": "anthropic",
            "model": MODEL,
        },
        {"name": "mystery", "provider": "anthropic", "model": UNKNOWN_MODEL},
        {"name": "cached", "provider": "anthropic", "model": MODEL, "system_prompt": SYSTEM},
    ]
}


def usage(input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
    }


def files(tmp_path: Path, settings: Settings) -> tuple[dict[str, str], Settings]:
    """The agents and prices files: as worker settings, and the orchestrator's settings with the agents."""
    agents = write_json(tmp_path / "agents.json", AGENTS)
    prices = write_json(tmp_path / "prices.json", PRICES)
    env = {"CODITECT_AGENTS_FILE": str(agents), "CODITECT_PRICES_FILE": str(prices)}
    return env, settings.model_copy(update={"agents_file": agents})


async def test_usage_and_cost_of_results_and_batch_totals_match_a_hand_computed_example(
    real_settings: Settings, start_workers: StartWorkers, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env, settings = files(tmp_path, real_settings)
    ledger = str(tmp_path / "ledger")
    tasks = [
        AgentTask(id="a1", title="Count to three", agent="pricer"),
        AgentTask(id="a2", title="Name the largest planet", agent="pricer"),
        AgentTask(id="r1", title="Try twice", agent="retrier", metadata={"ledger": ledger}),
        AgentTask(id="m1", title="Who knows", agent="mystery"),
        AgentTask(id="m2", title="Who knows", agent="mystery"),
    ]
    async with provider_process() as provider:
        (worker,) = await start_workers(1, **provider.worker_env(**env, CODITECT_RETRY_BACKOFF_S="0.05"))
        async with ProjectOrchestrator(settings) as orch:
            results = await orch.run_batch(tasks, batch_id="priced", timeout_s=60)
            events = [event async for event in orch.events("priced", follow=False)]
        cli_env = {**worker_env, "CODITECT_AGENTS_FILE": env["CODITECT_AGENTS_FILE"]}
        status = await run_cli(["status", "priced", "--json"], cli_env)
        listed = await run_cli(["results", "priced", "--json"], cli_env)
        requests = await provider.requests()

    by_id = {result.task_id: result for result in results}
    print(f"\n[cost] {[(r.task_id, r.usage.model_dump(), r.cost_usd, r.attempts) for r in results]}")
    # a1: "Count to three" is 14 characters: (14 + 3) // 4 + 3 = 7 in; "echo: Count to three" is 20:
    #     (20 + 3) // 4 = 5 out. $ (7 x 3 + 5 x 15) / 1e6 = 0.000096
    # a2: 23 characters: 6 + 3 = 9 in; 29: 8 out. $ (9 x 3 + 8 x 15) / 1e6 = 0.000147
    # r1: 9 characters: 3 + 3 = 6 in; 15: 4 out, $0.000078 per call; two attempts each made the call.
    # m1, m2: 6 in, 4 out each, no price.
    expected = {
        "a1": (usage(7, 5), 0.000096, 1),
        "a2": (usage(9, 8), 0.000147, 1),
        "r1": (usage(12, 8), 0.000156, 2),
        "m1": (usage(6, 4), None, 1),
        "m2": (usage(6, 4), None, 1),
    }
    assert all(result.status is ExecutionStatus.SUCCESS for result in results), results
    for task_id, (tokens, cost, attempts) in expected.items():
        got = by_id[task_id]
        assert (got.usage.model_dump(), got.attempts) == (tokens, attempts), got
        assert got.cost_usd == (pytest.approx(cost) if cost is not None else None), got
        assert got.model == (UNKNOWN_MODEL if task_id.startswith("m") else MODEL)
    assert len(requests) == 6  # r1's first attempt reached the provider too

    # Totals: 40 in, 29 out; $0.000096 + 0.000147 + 0.000156 = $0.000399; m1 and m2 unpriced.
    totals = {"in": 40, "out": 29, "cache_read": 0, "cache_write": 0}
    summary = status.json()
    print(f"[cost] status --json: {summary}")
    assert status.code == 0, status.stderr
    assert summary["usage"] == totals
    assert summary["cost_usd"] == pytest.approx(0.000399)
    assert summary["unpriced_tasks"] == 2
    assert summary["by_model"][MODEL] == pytest.approx({"in": 28, "out": 21, "cost": 0.000399})
    assert summary["by_model"][UNKNOWN_MODEL] == {"in": 12, "out": 8, "unpriced": 2}
    assert summary["by_agent"]["pricer"] == pytest.approx({"in": 16, "out": 13, "cost": 0.000243})
    assert summary["by_agent"]["retrier"] == pytest.approx({"in": 12, "out": 8, "cost": 0.000156})
    assert summary["by_agent"]["mystery"] == {"in": 12, "out": 8, "unpriced": 2}
    # Counts read as integers (16, not 16.0); the cost is a float.
    counts = [value for group in ("by_agent", "by_model") for totals_of in summary[group].values()
              for key, value in totals_of.items() if key != "cost"]  # fmt: skip
    assert counts
    assert all(type(value) is int for value in counts)
    assert '"in": 16,' in status.stdout  # the pricer agent's, as printed

    assert listed.code == 0, listed.stderr
    assert listed.json()["totals"] == {key: value for key, value in summary.items() if key != "batch_id"}
    listed_results = {item["task_id"]: item for item in listed.json()["results"]}
    for task_id, (tokens, cost, attempts) in expected.items():
        assert listed_results[task_id]["usage"] == tokens
        assert listed_results[task_id]["cost_usd"] == (pytest.approx(cost) if cost is not None else None)
        assert listed_results[task_id]["attempts"] == attempts

    (finished,) = [event for event in events if event.type == "batch.finished"]
    print(f"[cost] batch.finished: {finished.data}")
    assert {key: finished.data[key] for key in totals} == totals
    assert finished.data["cost"] == pytest.approx(0.000399)
    assert finished.data["success"] == 5

    warnings = [line for line in worker.lines if f"no price for model {UNKNOWN_MODEL!r}" in line]
    assert len(warnings) == 1, worker.lines


async def test_prompt_cache_reads_show_in_usage_totals_and_cost(
    real_settings: Settings, start_workers: StartWorkers, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env, settings = files(tmp_path, real_settings)
    tasks = [AgentTask(id=f"c{n}", title=f"Question {n}", agent="cached") for n in range(1, 6)]
    async with provider_process() as provider:
        # One slot: the calls go one after another, so exactly the first writes the cache.
        await start_workers(1, **provider.worker_env(**env, CODITECT_MAX_JOBS="1"))
        async with ProjectOrchestrator(settings) as orch:
            results = await orch.run_batch(tasks, batch_id="cached", timeout_s=60)
            summary = (await orch.summary("cached")).to_json_dict()
        requests = await provider.requests()

    print(f"\n[cache] {[(r.task_id, r.usage.model_dump(), r.cost_usd) for r in results]}")
    print(f"[cache] totals: {summary['usage']}, ${summary['cost_usd']}")
    # "Question n": 10 characters, (10 + 3) // 4 + 3 = 6 in; "echo: Question n": 16, 4 out; the
    # 400-character system prompt is 100 tokens, written once ($3.75/Mtok) and then read ($0.30/Mtok):
    # the writer (6 x 3 + 4 x 15 + 100 x 3.75) / 1e6 = $0.000453; each reader (18 + 60 + 30) / 1e6
    # = $0.000108.
    assert all(result.status is ExecutionStatus.SUCCESS for result in results), results
    writes = [result for result in results if result.usage.cache_write_tokens]
    reads = [result for result in results if result.usage.cache_read_tokens]
    assert len(writes) == 1
    assert len(reads) == 4
    assert writes[0].usage.model_dump() == usage(6, 4, cache_write=100)
    assert writes[0].cost_usd == pytest.approx(0.000453)
    for result in reads:
        assert result.usage.model_dump() == usage(6, 4, cache_read=100)
        assert result.cost_usd == pytest.approx(0.000108)
    assert summary["usage"] == {"in": 30, "out": 20, "cache_read": 400, "cache_write": 100}
    assert summary["cost_usd"] == pytest.approx(0.000453 + 4 * 0.000108)
    assert summary["by_agent"]["cached"] == pytest.approx(
        {"in": 30, "out": 20, "cache_read": 400, "cache_write": 100, "cost": 0.000885}
    )
    # Sent as a cacheable block, as the SDK puts it on the wire.
    block = {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}
    assert all(request["body"]["system"] == [block] for request in requests)
