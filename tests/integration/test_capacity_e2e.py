"""Shared rate limits end to end: batches through ``ProjectOrchestrator.run_batch`` on real worker
processes, which call the fake provider (a process enforcing its own limits over short intervals)
through the real Anthropic SDK and share a ``CODITECT_LIMITS_FILE`` through the suite's redis-server.
``-s`` shows the figures.

The limits file sets each limit 5 % under the provider's: calls go out exactly at the configured rate,
and providers count over short windows, so a few milliseconds of network and scheduling jitter would
otherwise put one call too many into some rolling second (H2's finding in ``test_capacity.py``; the
README, "Rate limits, prices").

The rate-limited batch runs on workers of 10 slots and of 4. With 4, a task whose time comes finds
every slot busy more often: it takes its slot back ahead of its time, and a call that would still go
out late asks for a new time (``coditect.llm.capacity``). A call can still leave late once it holds
its slot (a busy event loop on a loaded machine, with 10 slots as with 4), hence a bound of 1 % of
429s rather than none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings
from tests.support.provider_process import max_in_flight, provider_process, write_json

StartWorkers = Callable[..., Any]

pytestmark = pytest.mark.timeout(120)

MODEL = "fake-sonnet"


def limits_file(tmp_path: Path, **per_minute: int) -> Path:
    return write_json(
        tmp_path / "limits.json", {"limits": [{"provider": "anthropic", "model": MODEL, **per_minute}]}
    )


@dataclass(frozen=True)
class Rate:
    """What the provider saw: requests answered 200 and 429, and the accepted ones' rate."""

    accepted: int
    refused: int
    span_s: float
    requests_per_minute: float
    max_in_1s: int

    @classmethod
    def of(cls, served: list[dict[str, Any]]) -> Rate:
        times = sorted(s["at"] for s in served if s["status"] == 200)
        span = times[-1] - times[0]
        busiest = start = 0
        for end in range(len(times)):
            while times[end] - times[start] >= 1.0:
                start += 1
            busiest = max(busiest, end - start + 1)
        return cls(
            accepted=len(times),
            refused=sum(1 for s in served if s["status"] == 429),
            span_s=round(span, 3),
            requests_per_minute=round((len(times) - 1) / span * 60, 1),  # n calls span n - 1 intervals
            max_in_1s=busiest,
        )


@pytest.mark.parametrize("max_jobs", [10, 4])
async def test_a_rate_limited_batch_on_two_workers_runs_at_the_shared_limit(
    real_settings: Settings, start_workers: StartWorkers, tmp_path: Path, max_jobs: int
) -> None:
    provider_rpm, rpm = 1800, 1710  # 30 in any rolling second at the provider; 5 % under, configured
    provider_tpm, tpm = 120_000, 114_000
    count = 600
    limits = limits_file(tmp_path, requests_per_minute=rpm, input_tokens_per_minute=tpm)
    args = ("--requests-per-minute", str(provider_rpm), "--input-tokens-per-minute", str(provider_tpm))
    async with provider_process(*args, "--latency-s", "0.05") as provider:
        env = provider.worker_env(
            CODITECT_LLM_MODEL=MODEL, CODITECT_LIMITS_FILE=str(limits), CODITECT_MAX_JOBS=str(max_jobs)
        )
        workers = await start_workers(2, **env)
        tasks = [AgentTask(id=f"t{i}", title=f"Question number {i}") for i in range(count)]
        async with ProjectOrchestrator(real_settings) as orch:
            # Freshly started workers are slow to send their first calls (first use of every code path,
            # and each claiming its first jobs at once): the figures are for warm workers. The
            # warm-up's own 429s are shown, not asserted.
            warm = [AgentTask(id=f"w{i}", title=f"Warm-up {i}") for i in range(60)]
            await orch.run_batch(warm, batch_id="warm-up", timeout_s=30)
            cold = await provider.served()
            await provider.clear()
            logged = [len(worker.lines) for worker in workers]
            started = time.monotonic()
            results = await orch.run_batch(tasks, batch_id="limited", timeout_s=90)
            took_s = time.monotonic() - started
        served = await provider.served()

    rate = Rate.of(served)
    in_flight = max_in_flight(results)
    asked_again = sum(
        "past its time: asking for a new one" in line
        for worker, start in zip(workers, logged, strict=True)
        for line in worker.lines[start:]
    )
    print(f"\n[rate-limited] {count} tasks, 2 workers x {max_jobs} slots, {took_s:.1f} s")
    print(f"[rate-limited] provider allows {provider_rpm}/min (30 in any second); limits file {rpm}/min")
    print(f"[rate-limited] {rate}; achieved/limit {rate.requests_per_minute / rpm:.3f}")
    print(f"[rate-limited] 429s: {rate.refused} in {len(served)} calls; asked again: {asked_again}")
    print(f"[rate-limited] warm-up on cold workers: {Rate.of(cold)}")
    print(f"[rate-limited] most tasks in flight per worker (waiting for capacity included): {in_flight}")
    assert [result.status for result in results] == [ExecutionStatus.SUCCESS] * count
    assert rate.accepted == count
    assert rate.refused < 0.01 * len(served)
    assert rate.requests_per_minute <= rpm * 1.05
    assert rate.requests_per_minute >= rpm * 0.9
    # A task waiting for capacity gives its slot back: each worker held far more tasks than slots.
    assert len(in_flight) == 2
    assert all(most > max_jobs for most in in_flight.values())


async def test_a_burst_of_429s_with_retry_after_pauses_every_worker(
    real_settings: Settings, start_workers: StartWorkers, tmp_path: Path
) -> None:
    limits = limits_file(tmp_path, requests_per_minute=1200)  # a call every 50 ms, shared
    count = 120
    async with provider_process() as provider:
        await start_workers(
            2, **provider.worker_env(CODITECT_LLM_MODEL=MODEL, CODITECT_LIMITS_FILE=str(limits))
        )
        # After 40 calls, the next three get a 429 with retry-after 2, answered 0.3 s after they arrive:
        # the calls sent meanwhile are in flight when the first 429 comes back, as in a real burst.
        await provider.plan(times=40)
        await provider.plan(status=429, headers={"retry-after": "2"}, delay_s=0.3, times=3)
        tasks = [AgentTask(id=f"t{i}", title=f"Question number {i}") for i in range(count)]
        started = time.monotonic()
        async with ProjectOrchestrator(real_settings) as orch:
            results = await orch.run_batch(tasks, batch_id="burst", timeout_s=60)
        took_s = time.monotonic() - started
        served = sorted(await provider.served(), key=lambda s: s["at"])

    refused = [s for s in served if s["status"] == 429]
    burst_s = refused[-1]["at"] - refused[0]["at"]
    first_answer, last_answer = refused[0]["at"] + 0.3, refused[-1]["at"] + 0.3
    before = [s for s in served if s["at"] < refused[0]["at"]]
    # A worker needs a moment to read the 429 and record the pause (generous: the machine is shared).
    noticed = first_answer + 0.5
    in_flight = [s for s in served if refused[0]["at"] <= s["at"] < noticed and s["status"] == 200]
    paused = [s for s in served if noticed <= s["at"] < last_answer + 1.9]
    after = [s for s in served if s["at"] >= last_answer + 1.9]
    resumed_after_s = after[0]["at"] - last_answer
    # The provider's times are this machine's monotonic clock; results carry wall-clock times.
    wall_minus_monotonic = time.time() - time.monotonic()
    ended: dict[str, set[str | None]] = {"before": set(), "after": set()}
    for result in results:
        assert result.finished_at is not None
        at = result.finished_at.timestamp() - wall_minus_monotonic
        if at < refused[0]["at"]:
            ended["before"].add(result.worker)
        elif at > last_answer + 1.9:
            ended["after"].add(result.worker)
    print(f"\n[burst] {count} tasks, 2 workers, {took_s:.1f} s; three 429s sent within {burst_s:.3f} s")
    print(
        f"[burst] calls: {len(before)} before, {len(in_flight)} in flight, {len(paused)} paused, "
        f"{len(after)} after; resumed {resumed_after_s:.3f} s after the last 429 was answered"
    )
    print(f"[burst] workers that finished tasks before the burst / after the pause: {ended}")
    assert len(refused) == 3
    assert burst_s < 0.3  # all three sent before the first answer
    assert paused == []
    assert 1.9 <= resumed_after_s < 5.0
    assert [result.status for result in results] == [ExecutionStatus.SUCCESS] * count
    assert sorted(result.attempts for result in results)[-4:] == [1, 2, 2, 2]
    assert len(served) == count + 3
    assert len(ended["before"]) == len(ended["after"]) == 2
