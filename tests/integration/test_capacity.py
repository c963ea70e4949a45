"""Shared rate limits across real processes: two ``capacity_client.py`` processes (the real Anthropic
SDK through ``call_with_capacity``) share the limits of one limits file through the suite's own
redis-server, against the fake provider running as a process and enforcing the same limits over
short intervals. ``-s`` shows the figures.

Request limits are configured 5 % below the provider's: calls are spaced exactly at the configured
rate, and a few milliseconds of scheduling and network jitter would otherwise put one call too many
into some rolling second (see the README, "Rate limits, prices").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from coditect.errors import CapacityDeferred
from coditect.keys import limit_key
from coditect.llm.base import LlmRequest, Message
from coditect.llm.capacity import call_with_capacity
from coditect.llm.limits import RateLimit, RateLimiter
from coditect.llm.offline import OfflineLlm

ROOT = Path(__file__).resolve().parents[2]
FAKE_PROVIDER = ROOT / "tests" / "support" / "fake_provider.py"
CLIENT = ROOT / "tests" / "support" / "capacity_client.py"
MODEL = "claude-sonnet-4-5"
SYSTEM = (
    "You are a careful assistant. Answer in one short sentence, and never repeat the question back. "
    "Keep it plain: no lists, no markdown, no preamble, just the answer itself."
)

pytestmark = pytest.mark.timeout(90)


@dataclass
class Provider:
    url: str
    http: httpx.AsyncClient

    async def served(self) -> list[dict[str, Any]]:
        response = await self.http.get("/_fake/served")
        served: list[dict[str, Any]] = response.json()
        return served


StartProvider = Callable[..., Awaitable[Provider]]


@pytest.fixture
async def start_provider() -> AsyncIterator[StartProvider]:
    processes: list[asyncio.subprocess.Process] = []
    clients: list[httpx.AsyncClient] = []

    async def start(*args: str) -> Provider:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(FAKE_PROVIDER), "--port", "0", *args, stdout=asyncio.subprocess.PIPE
        )
        processes.append(process)
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), timeout=20))
        url = f"http://127.0.0.1:{port}"
        clients.append(http := httpx.AsyncClient(base_url=url, timeout=10))
        return Provider(url, http)

    yield start
    for client in clients:
        await client.aclose()
    for process in processes:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)


async def run_clients(
    count: int,
    *,
    redis_url: str,
    provider: Provider,
    limits: Path,
    requests: int,
    extra: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Start ``count`` client processes, let them go together, and return their figures."""
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(CLIENT),
            "--redis-url",
            redis_url,
            "--base-url",
            provider.url,
            "--limits-file",
            str(limits),
            "--client",
            f"p{index}",
            "--requests",
            str(requests // count),
            "--seed",
            str(index),
            *extra,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for index in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert (await asyncio.wait_for(process.stdout.readline(), timeout=30)).strip() == b"ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        figures = []
        for process in processes:
            assert process.stdout is not None
            figures.append(json.loads(await asyncio.wait_for(process.stdout.readline(), timeout=60)))
            assert await asyncio.wait_for(process.wait(), timeout=10) == 0
        return figures
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


def write_limits(tmp_path: Path, **per_minute: int) -> Path:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"limits": [{"provider": "anthropic", "model": MODEL, **per_minute}]}))
    return path


def max_in_window(times: list[float], weights: list[int], window_s: float) -> int:
    """The largest total weight of events within any window of ``window_s`` (half-open)."""
    best = total = start = 0
    for end in range(len(times)):
        total += weights[end]
        while times[end] - times[start] >= window_s:
            total -= weights[start]
            start += 1
        best = max(best, total)
    return best


@dataclass(frozen=True)
class Achieved:
    accepted: int
    rate_limited: int
    span_s: float
    requests_per_minute: float
    input_tokens_per_minute: float
    max_requests_in_1s: int
    max_input_tokens_in_1s: int


def achieved(served: list[dict[str, Any]]) -> Achieved:
    ok = sorted((s for s in served if s["status"] == 200), key=lambda s: s["at"])
    times = [s["at"] for s in ok]
    tokens = [s["input_tokens"] for s in ok]
    span = times[-1] - times[0]
    return Achieved(
        accepted=len(ok),
        rate_limited=sum(1 for s in served if s["status"] == 429),
        span_s=round(span, 3),
        # n calls span n - 1 intervals; the last call's tokens fall after the span
        requests_per_minute=round((len(ok) - 1) / span * 60, 1),
        input_tokens_per_minute=round(sum(tokens[:-1]) / span * 60, 1),
        max_requests_in_1s=max_in_window(times, [1] * len(times), 1.0),
        max_input_tokens_in_1s=max_in_window(times, tokens, 1.0),
    )


def report(
    name: str, limits: dict[str, int], got: Achieved, clients: list[dict[str, Any]], took_s: float
) -> None:
    print(f"\n[{name}] limits {limits}; {took_s:.1f} s")
    print(f"[{name}] provider: {got}")
    for figures in clients:
        print(f"[{name}] client: {figures}")


async def test_two_processes_share_a_request_limit_without_429s(
    redis_url: str, tmp_path: Path, start_provider: StartProvider
) -> None:
    provider_rpm, rpm = 1200, 1140  # 20 a second at the provider; 19 configured
    provider = await start_provider("--requests-per-minute", str(provider_rpm))
    limits = write_limits(tmp_path, requests_per_minute=rpm, input_tokens_per_minute=120_000)
    started = time.monotonic()

    clients = await run_clients(
        2, redis_url=redis_url, provider=provider, limits=limits, requests=240, extra=("--system", SYSTEM)
    )

    got = achieved(await provider.served())
    report("requests", {"provider_rpm": provider_rpm, "rpm": rpm}, got, clients, time.monotonic() - started)
    assert got.accepted == 240
    assert got.rate_limited <= 2  # under 1 %
    assert got.requests_per_minute <= rpm * 1.05
    assert got.requests_per_minute >= rpm * 0.9
    assert got.max_requests_in_1s <= provider_rpm // 60
    assert all(figures["ok"] == 120 for figures in clients)
    assert all(figures["other_errors"] == 0 for figures in clients)


async def test_two_processes_share_an_input_token_limit_without_429s(
    redis_url: str, tmp_path: Path, start_provider: StartProvider
) -> None:
    tpm = 60_000  # 1,000 a second, the provider's bucket one second deep
    provider = await start_provider("--input-tokens-per-minute", str(tpm))
    limits = write_limits(tmp_path, input_tokens_per_minute=tpm)
    started = time.monotonic()

    clients = await run_clients(2, redis_url=redis_url, provider=provider, limits=limits, requests=300)

    got = achieved(await provider.served())
    report("input tokens", {"tpm": tpm}, got, clients, time.monotonic() - started)
    assert got.accepted == 300
    assert got.rate_limited <= 3  # under 1 %
    assert got.input_tokens_per_minute <= tpm * 1.05
    assert got.input_tokens_per_minute >= tpm * 0.9
    assert all(figures["other_errors"] == 0 for figures in clients)


async def test_a_burst_of_429s_pauses_every_process(
    redis_url: str, tmp_path: Path, start_provider: StartProvider
) -> None:
    provider = await start_provider()
    limits = write_limits(tmp_path, requests_per_minute=1200)  # a call every 50 ms
    # After 40 calls, the next three get a 429 with retry-after 2, answered 0.3 s after they arrive:
    # the calls sent meanwhile are in flight when the first 429 comes back, as in a real burst.
    await provider.http.post("/_fake/plan", json={"times": 40})
    await provider.http.post(
        "/_fake/plan", json={"status": 429, "headers": {"retry-after": "2"}, "delay_s": 0.3, "times": 3}
    )
    started = time.monotonic()

    # 10 calls in flight a process: with 50, the process that started first reserved the first 2.5 s
    # of calls, and the other sent few or none of the 40 before the burst.
    clients = await run_clients(
        2, redis_url=redis_url, provider=provider, limits=limits, requests=120, extra=("--concurrency", "10")
    )

    served = sorted(await provider.served(), key=lambda s: s["at"])
    refused = [s for s in served if s["status"] == 429]
    first_answer, last_answer = refused[0]["at"] + 0.3, refused[-1]["at"] + 0.3
    before = [s for s in served if s["at"] < refused[0]["at"]]
    # A process needs a moment to read the 429 and record the pause (generous: the machine is shared).
    noticed = first_answer + 0.5
    in_flight = [s for s in served if refused[0]["at"] <= s["at"] < noticed and s["status"] == 200]
    paused = [s for s in served if noticed <= s["at"] < last_answer + 1.9]
    after = [s for s in served if s["at"] >= last_answer + 1.9]
    resumed_after_s = after[0]["at"] - last_answer
    burst_s = refused[-1]["at"] - refused[0]["at"]
    print(f"\n[cooldown] {time.monotonic() - started:.1f} s; three 429s arrived within {burst_s:.3f} s")
    print(
        f"[cooldown] calls: {len(before)} before, {len(in_flight)} in flight, {len(paused)} paused,", end=" "
    )
    print(f"{len(after)} after; resumed {resumed_after_s:.3f} s after the last 429 was answered")
    print(f"[cooldown] clients: {clients}")
    assert len(refused) == 3
    assert refused[-1]["at"] - refused[0]["at"] < 0.3  # all three sent before the first answer
    assert {s["client"] for s in before} == {"p0", "p1"}
    assert paused == []
    assert {s["client"] for s in after} == {"p0", "p1"}
    assert 1.9 <= resumed_after_s < 5.0
    assert sum(figures["ok"] for figures in clients) == 120
    assert sum(figures["rate_limited"] for figures in clients) == 3


async def test_the_limiter_on_real_redis_in_process(redis_url: str) -> None:
    """Every script operation on a real redis-server (the unit tests run it on fakeredis)."""
    redis = Redis.from_url(redis_url)
    limit = RateLimit("offline", None, requests_per_minute=600, output_tokens_per_minute=6000)
    rate = RateLimiter(redis, [limit], horizon_s=0.5)  # a call every 0.1 s; 10 ms per output token
    llm, hello, request, waits = OfflineLlm(), [Message("user", "hi")], LlmRequest(max_tokens=50), []
    try:
        first = await call_with_capacity(llm, hello, request, limiter=rate, idle=contextlib.nullcontext)
        # 50 output tokens reserved, a few used: the call's own charge shrinks to what it used.
        state = await redis.hgetall(limit_key("output_tokens", "offline", None))
        await call_with_capacity(
            llm, hello, request, limiter=rate, idle=contextlib.nullcontext, on_wait=waits.append
        )
        granted = 0
        while (reservation := await rate.reserve("offline", "offline-1", 1, 1)).granted:
            granted += 1
        with pytest.raises(CapacityDeferred) as caught:
            await call_with_capacity(llm, hello, request, limiter=rate, idle=contextlib.nullcontext)
        await rate.cool_down("offline", "offline-1", 2)
        left = await rate.cooldown_left("offline", "offline-1")
    finally:
        await redis.aclose()

    assert int(state[b"e"]) - int(state[b"s"]) == first.usage.output_tokens * 10_000
    assert len(waits) == 1
    assert 0 < waits[0] <= 0.2
    assert 3 <= granted <= 5  # 0.1 s apart, at most 0.5 s ahead
    assert 0.5 < reservation.wait_s <= 0.7
    assert 0.5 < caught.value.delay_s <= 0.8
    assert 1.5 < left <= 2.0
