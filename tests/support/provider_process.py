"""The fake provider as a process of its own, for real worker processes to call through the real SDK.

    async with provider_process("--requests-per-minute", "1200") as provider:
        await start_workers(2, **provider.worker_env(CODITECT_LIMITS_FILE=str(limits)))
        await provider.plan(status=429, headers={"retry-after": "2"})
        served = await provider.served()      # every API request as answered: at, status, tokens

Also what the end-to-end tests of capacity, cost and budgets share: the agents, limits and prices
files they write, and ``coditect`` commands run as subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from coditect.models import ExecutionResult

__all__ = [
    "TEST_API_KEY",
    "CliRun",
    "ProviderProcess",
    "max_in_flight",
    "provider_process",
    "run_cli",
    "write_json",
]

FAKE_PROVIDER = Path(__file__).resolve().parent / "fake_provider.py"
# Long enough that the log filter masks any run of 8 of its characters.
TEST_API_KEY = "sk-ant-test-e2e-K3yThatMustNeverBeLogged-0123456789"


@dataclass
class ProviderProcess:
    """A running ``fake_provider.py``, scripted over its control API."""

    url: str
    http: httpx.AsyncClient

    async def plan(self, **response: Any) -> None:
        """Queue a planned response (``Plan``'s fields, and ``times``)."""
        (await self.http.post("/_fake/plan", json=response)).raise_for_status()

    async def clear(self) -> None:
        """Forget plans, requests, what was served and the prompt cache (not the rate-limit state)."""
        (await self.http.post("/_fake/clear")).raise_for_status()

    async def served(self) -> list[dict[str, Any]]:
        """Every API request as it was answered, in arrival order: ``at`` (the machine's monotonic
        clock), ``status``, ``input_tokens``, ``output_tokens``, ``rate_limited``."""
        reply = await self.http.get("/_fake/served")
        reply.raise_for_status()
        served: list[dict[str, Any]] = reply.json()
        return served

    async def requests(self) -> list[dict[str, Any]]:
        reply = await self.http.get("/_fake/requests")
        reply.raise_for_status()
        requests: list[dict[str, Any]] = reply.json()
        return requests

    def worker_env(self, **extra: str) -> dict[str, str]:
        """Worker settings for the anthropic provider (the official SDK) pointed at this process."""
        return {
            "CODITECT_LLM_PROVIDER": "anthropic",
            "ANTHROPIC_API_KEY": TEST_API_KEY,
            "CODITECT_ANTHROPIC_BASE_URL": self.url,
            **extra,
        }


@asynccontextmanager
async def provider_process(*args: str) -> AsyncIterator[ProviderProcess]:
    """``fake_provider.py --port 0 *args`` until the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(FAKE_PROVIDER), "--port", "0", *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), timeout=20))
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield ProviderProcess(url, http)
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def run_cli(args: Sequence[str], env: Mapping[str, str], timeout_s: float = 60.0) -> CliRun:
    """``python -m coditect *args`` with ``env``; its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coditect", *args, env=dict(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return CliRun(process.returncode, stdout.decode(), stderr.decode())


def max_in_flight(results: Sequence[ExecutionResult]) -> dict[str, int]:
    """Per worker, the most tasks it had started and not yet finished at one moment."""
    edges: dict[str, list[tuple[datetime, int]]] = {}
    for result in results:
        assert result.worker is not None
        assert result.started_at is not None
        assert result.finished_at is not None
        edges.setdefault(result.worker, []).extend([(result.started_at, 1), (result.finished_at, -1)])
    most: dict[str, int] = {}
    for worker, changes in edges.items():
        running = best = 0
        for _, change in sorted(changes):  # at a tie an end (-1) sorts first: touching runs do not overlap
            running += change
            best = max(best, running)
        most[worker] = best
    return most
