"""Fault matrix, providers (issue 4, row 4): a fake provider process, real workers, through the queue."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.settings import Settings
from tests.support.faults import eventually

StartWorkers = Callable[..., Any]

FAKE_PROVIDER = Path(__file__).resolve().parents[1] / "support" / "fake_provider.py"
TEST_KEY = "sk-test-faults-0123456789"


@pytest.fixture(scope="module")
def fake_port() -> Iterator[int]:
    """``tests/support/fake_provider.py`` as a process of its own, for every test of this module."""
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_PROVIDER), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Fake:
    """Scripts the fake provider over its control API."""

    port: int
    http: httpx.AsyncClient

    async def plan(self, **response: Any) -> None:
        (await self.http.post("/_fake/plan", json=response)).raise_for_status()

    async def requests(self) -> list[dict[str, Any]]:
        reply = await self.http.get("/_fake/requests")
        reply.raise_for_status()
        requests: list[dict[str, Any]] = reply.json()
        return requests

    def openai_env(self, **extra: str) -> dict[str, str]:
        return {
            "CODITECT_LLM_PROVIDER": "openai",
            "CODITECT_OPENAI_BASE_URL": f"http://127.0.0.1:{self.port}/v1",
            "CODITECT_RETRY_BACKOFF_S": "0.05",
            "CODITECT_MAX_TRIES": "3",
            **extra,
        }


@pytest.fixture
async def fake(fake_port: int) -> AsyncIterator[Fake]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fake_port}", timeout=10) as http:
        (await http.post("/_fake/clear")).raise_for_status()
        yield Fake(fake_port, http)


async def run_one(settings: Settings, title: str, batch_id: str) -> ExecutionResult:
    async with ProjectOrchestrator(settings) as orch:
        (result,) = await asyncio.wait_for(
            orch.run_batch([AgentTask(id="t", title=title)], batch_id=batch_id), 30
        )
    return result


def prompts(requests: list[dict[str, Any]]) -> list[str]:
    return [r["body"]["messages"][-1]["content"] for r in requests]


# -- retried, then success ----------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_429_waits_at_least_retry_after_and_frees_the_worker_slot_meanwhile(
    real_settings: Settings, start_workers: StartWorkers, fake: Fake
) -> None:
    await start_workers(1, **fake.openai_env(CODITECT_MAX_JOBS="1"))
    await fake.plan(status=429, headers={"retry-after": "1"})
    async with ProjectOrchestrator(real_settings) as orch:
        await orch.submit([AgentTask(id="limited", title="limited")], batch_id="a")
        polled_at = [time.time()]

        async def first_request() -> bool:
            polled_at.append(time.time())
            return len(await fake.requests()) >= 1

        await eventually(first_request, timeout_s=10, what="the first request", interval_s=0.01)
        # The request arrived after the start of the last poll that did not see it.
        arrived_after = polled_at[-2]
        await orch.submit([AgentTask(id="other", title="other")], batch_id="b")
        (first,), (second,) = await asyncio.wait_for(asyncio.gather(orch.wait("a"), orch.wait("b")), 20)
    assert (first.status, first.attempts) == (ExecutionStatus.SUCCESS, 2), first
    assert (second.status, second.attempts) == (ExecutionStatus.SUCCESS, 1), second
    assert first.started_at is not None
    assert second.finished_at is not None
    assert first.started_at.timestamp() - arrived_after >= 1.0  # retry-after honoured
    # With one slot, the other task ran to the end while the limited one waited.
    assert second.finished_at < first.started_at
    assert prompts(await fake.requests()) == ["limited", "other", "limited"]


TRANSIENT_FAULTS: dict[str, dict[str, Any]] = {
    "overloaded-529": {"status": 529},
    "server-error-500": {"status": 500},
    "connection-reset": {"reset": True},
    "read-timeout": {"delay_s": 3},
}


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS.values(), ids=TRANSIENT_FAULTS.keys())
async def test_a_transient_provider_fault_is_retried_then_succeeds(
    real_settings: Settings, start_workers: StartWorkers, fake: Fake, fault: dict[str, Any]
) -> None:
    await start_workers(1, **fake.openai_env(CODITECT_LLM_TIMEOUT_S="1"))
    await fake.plan(**fault)
    result = await run_one(real_settings, "flaky", "transient")
    assert result.status is ExecutionStatus.SUCCESS, result
    assert result.attempts == 2
    assert result.output == "echo: flaky"
    assert result.error is None
    assert prompts(await fake.requests()) == ["flaky", "flaky"]


async def test_a_persistent_500_fails_after_max_tries_with_the_last_error(
    real_settings: Settings, start_workers: StartWorkers, fake: Fake
) -> None:
    await start_workers(1, **fake.openai_env())
    await fake.plan(status=500, message="upstream exploded", times=10)
    result = await run_one(real_settings, "doomed", "persistent")
    assert result.status is ExecutionStatus.FAILED, result
    assert result.attempts == 3
    assert result.error is not None
    assert "HTTP 500" in result.error
    assert "upstream exploded" in result.error
    assert len(await fake.requests()) == 3


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_a_permanent_provider_error_fails_at_once(
    real_settings: Settings, start_workers: StartWorkers, fake: Fake, status: int
) -> None:
    await start_workers(1, **fake.openai_env())
    await fake.plan(status=status, times=1)  # a retry would succeed: a wrong retry shows
    result = await run_one(real_settings, "refused", f"permanent-{status}")
    assert result.status is ExecutionStatus.FAILED, result
    assert result.attempts == 1
    assert result.error is not None
    assert f"HTTP {status}" in result.error
    assert len(await fake.requests()) == 1


async def test_the_anthropic_sdk_path_retries_a_529_once_through_the_queue_not_in_the_sdk(
    real_settings: Settings, start_workers: StartWorkers, fake: Fake
) -> None:
    await start_workers(
        1,
        ANTHROPIC_API_KEY=TEST_KEY,
        CODITECT_LLM_PROVIDER="anthropic",
        CODITECT_ANTHROPIC_BASE_URL=f"http://127.0.0.1:{fake.port}",
        CODITECT_RETRY_BACKOFF_S="0.05",
    )
    await fake.plan(status=529)
    result = await run_one(real_settings, "through the SDK", "anthropic")
    assert result.status is ExecutionStatus.SUCCESS, result
    assert (result.attempts, result.provider) == (2, "anthropic")
    assert result.output == "echo: through the SDK"
    requests = await fake.requests()
    assert [r["path"] for r in requests] == ["/v1/messages"] * 2  # the SDK's own retries are off
    for request in requests:  # the key travels in a header (which one depends on the SDK version)
        headers = request["headers"]
        assert TEST_KEY in headers.get("x-api-key", "") + headers.get("authorization", "")
    assert prompts(requests) == ["through the SDK"] * 2
