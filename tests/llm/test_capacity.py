"""call_with_capacity: the real Anthropic provider (SDK against the fake provider) within shared limits
kept on fakeredis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis

from coditect.errors import CapacityDeferred, TransientProviderError
from coditect.keys import limit_key
from coditect.llm.anthropic import AnthropicLlm, create_anthropic_client
from coditect.llm.base import LlmRequest, LlmResponse, Message
from coditect.llm.capacity import call_with_capacity
from coditect.llm.limits import RateLimit, RateLimiter, Reservation
from coditect.llm.offline import OfflineLlm
from coditect.settings import Settings
from tests.support.fake_provider import FakeProvider, refused_port

MODEL = "claude-test"
HELLO = [Message("user", "hello world")]
REQUEST = LlmRequest(system="be brief", max_tokens=20)


class Idle:
    """The engine's idle context manager, counting how often a task waited under it. ``on_exit`` stands
    for taking a slot back, which waits for a job to end when every slot is busy."""

    def __init__(
        self,
        on_enter: Callable[[], Awaitable[None]] | None = None,
        on_exit: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.entered = 0
        self.on_enter = on_enter
        self.on_exit = on_exit

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        self.entered += 1
        if self.on_enter is not None:
            await self.on_enter()
        yield
        if self.on_exit is not None:
            await self.on_exit(self.entered)


@pytest.fixture
def server() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
async def llm(server: FakeProvider) -> AsyncIterator[AnthropicLlm]:
    settings = Settings(_env_file=None, anthropic_api_key="sk-test", anthropic_base_url=server.url)  # type: ignore[call-arg]
    client = create_anthropic_client(settings)
    try:
        yield AnthropicLlm(client, MODEL)
    finally:
        await client.close()


@pytest.fixture
def fake_redis() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
async def redis(fake_redis: fakeredis.FakeServer) -> AsyncIterator[Redis]:
    client = fakeredis.FakeAsyncRedis(server=fake_redis)
    yield client
    await client.aclose()


def limiter(redis: Redis, horizon_s: float = 5.0, **per_minute: int) -> RateLimiter:
    return RateLimiter(redis, [RateLimit("anthropic", MODEL, **per_minute)], horizon_s=horizon_s)


class Reserves:
    """Counts a limiter's reservations."""

    def __init__(self, rate: RateLimiter) -> None:
        self.count = 0
        self._reserve = rate.reserve
        rate.reserve = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any) -> Reservation:
        self.count += 1
        return await self._reserve(*args)


async def test_without_a_limiter_the_call_goes_straight_out(llm: AnthropicLlm, server: FakeProvider) -> None:
    idle = Idle()

    response = await call_with_capacity(llm, HELLO, REQUEST, limiter=None, idle=idle)

    assert response.text == "echo: hello world"
    assert idle.entered == 0
    assert len(server.requests) == 1


async def test_a_model_without_limits_costs_no_redis_round_trip(llm: AnthropicLlm) -> None:
    with refused_port() as port:
        unreachable = Redis(port=port, socket_connect_timeout=0.5)
        try:
            rate = RateLimiter(unreachable, [RateLimit("anthropic", "claude-other", requests_per_minute=1)])
            response = await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=Idle())
        finally:
            await unreachable.aclose()

    assert response.text == "echo: hello world"


async def test_the_charge_is_corrected_by_the_usage_and_the_cached_prompt_learnt(
    llm: AnthropicLlm, redis: Redis
) -> None:
    # Slow limits, so that the charges outlast the call whatever its speed: 0.1 s per input token,
    # 1 s per output token.
    rate = limiter(redis, input_tokens_per_minute=600, output_tokens_per_minute=60)
    request = LlmRequest(system="x" * 400, max_tokens=20)  # estimated 100 + 3 + 4 = 107 tokens in

    async def charge_us(dimension: str) -> int:
        state = await redis.hgetall(limit_key(dimension, "anthropic", MODEL))
        return int(state[b"e"]) - int(state[b"s"])

    response = await call_with_capacity(llm, HELLO, request, limiter=rate, idle=Idle())

    # It wrote the system prompt to the cache: 6 + 100 input tokens count; 5 of its 20 output tokens.
    assert (response.usage.input_tokens, response.usage.cache_write_tokens, response.usage.output_tokens) == (
        6,
        100,
        5,
    )
    assert await charge_us("input_tokens") == 106 * 100_000
    assert await charge_us("output_tokens") == 5 * 1_000_000
    # The next call's estimate leaves the cached prompt out: cache reads do not count.
    assert rate.estimate_input_tokens("anthropic", MODEL, request.system, HELLO) == 3 + 4


async def test_capacity_within_the_horizon_is_waited_for_idle(
    llm: AnthropicLlm, redis: Redis, server: FakeProvider
) -> None:
    rate = limiter(redis, requests_per_minute=300)  # 0.2 s apart
    idle, waits = Idle(), []

    started = time.monotonic()
    await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=idle, on_wait=waits.append)
    await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=idle, on_wait=waits.append)
    elapsed = time.monotonic() - started

    assert idle.entered == 1
    assert len(waits) == 1
    assert 0 < waits[0] <= 0.25  # 0.2 s after the first call's start, less the time that call took
    # Generous: the calls are 0.2 s apart on Redis's clock, read and slept on by a busy machine.
    assert elapsed >= 0.15
    assert server.served[1].at - started >= 0.15


async def test_a_task_takes_its_slot_back_ahead_of_its_time_so_that_it_calls_on_time(
    llm: AnthropicLlm, redis: Redis, server: FakeProvider
) -> None:
    rate = RateLimiter(redis, [RateLimit("anthropic", MODEL, requests_per_minute=120)], lead_s=0.3)  # 0.5 s

    async def every_slot_busy(_: int) -> None:
        await asyncio.sleep(0.25)  # a slot frees when a job ends, a quarter of a second later

    idle = Idle(on_exit=every_slot_busy)
    started = time.monotonic()
    await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=idle)
    await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=idle)

    assert idle.entered == 1
    # At its time, 0.5 s after the first reservation (made after `started`); taking the slot back at its
    # time would send it 0.25 s late.
    assert server.served[1].at - started >= 0.49
    assert server.served[1].at - server.served[0].at < 0.6


async def test_a_wait_shorter_than_the_lead_keeps_the_slot(
    llm: AnthropicLlm, redis: Redis, server: FakeProvider
) -> None:
    rate = RateLimiter(redis, [RateLimit("anthropic", MODEL, requests_per_minute=600)], lead_s=0.2)  # 0.1 s
    idle, waits = Idle(), []

    started = time.monotonic()
    await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=idle)
    await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=idle, on_wait=waits.append)

    assert idle.entered == 0
    assert len(waits) == 1
    # The second time is 0.1 s after the first reservation, which precedes the first call's arrival at
    # the server by however long sending it took: measure from before the first call.
    assert server.served[1].at - started >= 0.09


async def test_a_call_past_its_time_asks_for_a_new_one_once(
    llm: AnthropicLlm, redis: Redis, server: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    rate = RateLimiter(
        redis, [RateLimit("anthropic", MODEL, requests_per_minute=120)], lead_s=0.05, late_s=0.02
    )  # 0.5 s apart
    reserves = Reserves(rate)
    others: list[float] = []

    async def slot_back_late(entered: int) -> None:
        if entered == 1:
            # Meanwhile another worker reserved the next time, and this task's slot comes back late.
            other = await rate.reserve("anthropic", MODEL, 1, 1)
            others.append(time.monotonic() + other.wait_s)
            await asyncio.sleep(0.2)

    idle = Idle(on_exit=slot_back_late)
    await rate.reserve("anthropic", MODEL, 1, 1)  # another worker's call: this task's time is in 0.5 s
    started = time.monotonic()

    with caplog.at_level(logging.INFO, logger="coditect.llm.capacity"):
        await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=idle)

    assert reserves.count == 1 + 2 + 1  # the two other calls' and this task's two
    assert idle.entered == 2
    assert "rate limit: anthropic/claude-test call 0.1" in caplog.text
    assert "past its time: asking for a new one" in caplog.text
    [served] = server.served
    # Not at its first time (0.5 s, where it would have gone 0.15 s late), but after the other call's
    # (1 s), at 1.5 s.
    assert served.at >= others[0] + 0.49
    assert served.at - started < 1.6


async def test_a_call_past_its_new_time_too_goes_out_all_the_same(
    llm: AnthropicLlm, redis: Redis, server: FakeProvider
) -> None:
    rate = RateLimiter(
        redis, [RateLimit("anthropic", MODEL, requests_per_minute=120)], lead_s=0.05, late_s=0.02
    )  # 0.5 s apart
    reserves = Reserves(rate)

    async def slot_back_late(_: int) -> None:
        await rate.reserve("anthropic", MODEL, 1, 1)  # another worker keeps taking the next time
        await asyncio.sleep(0.2)

    idle = Idle(on_exit=slot_back_late)
    await rate.reserve("anthropic", MODEL, 1, 1)

    await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=idle)

    assert idle.entered == 2  # asked for a new time once, then called although late again
    assert reserves.count == 1 + 2 + 2
    assert len(server.served) == 1


async def test_capacity_beyond_the_horizon_defers_the_task_and_sends_nothing(
    llm: AnthropicLlm, redis: Redis, server: FakeProvider
) -> None:
    rate = limiter(redis, horizon_s=1.0, requests_per_minute=20)  # 3 s apart
    await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=Idle())

    with pytest.raises(CapacityDeferred) as caught:
        await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=Idle())

    assert 2.0 < caught.value.delay_s <= 3.0  # when the capacity frees: 3 s after the first call
    assert (caught.value.provider, caught.value.model) == ("anthropic", MODEL)
    assert "no rate-limit capacity for anthropic/claude-test" in str(caught.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize(("status", "paused"), [(429, True), (529, True), (500, False), (503, False)])
async def test_a_429_or_529_with_retry_after_pauses_the_model_for_everyone(
    llm: AnthropicLlm, redis: Redis, server: FakeProvider, status: int, paused: bool
) -> None:
    rate = limiter(redis, requests_per_minute=6000)
    server.plan(status=status, headers={"retry-after": "3"})

    with pytest.raises(TransientProviderError) as caught:
        await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=Idle())

    assert caught.value.status_code == status
    left = await rate.cooldown_left("anthropic", MODEL)
    if paused:
        assert 2.5 < left <= 3.0
    else:
        assert left == 0


async def test_a_429_without_retry_after_pauses_by_its_rate_limit_headers(
    llm: AnthropicLlm, redis: Redis, server: FakeProvider
) -> None:
    rate = limiter(redis, requests_per_minute=6000)
    server.plan(status=429)

    with pytest.raises(TransientProviderError):
        await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=Idle())
    assert await rate.cooldown_left("anthropic", MODEL) == 0

    reset = "2099-01-01T00:00:00Z"  # far away: capped at 300 s
    server.plan(
        status=429,
        headers={"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset},
    )
    with pytest.raises(TransientProviderError):
        await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=Idle())
    assert 295 < await rate.cooldown_left("anthropic", MODEL) <= 300


async def test_a_success_saying_an_allowance_is_spent_pauses_the_model(
    llm: AnthropicLlm, redis: Redis, server: FakeProvider
) -> None:
    rate = limiter(redis, requests_per_minute=6000)
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30))
    server.plan(
        headers={
            "anthropic-ratelimit-output-tokens-remaining": "0",
            "anthropic-ratelimit-output-tokens-reset": soon,
        }
    )

    response = await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=Idle())

    assert response.text == "echo: hello world"
    assert 25 < await rate.cooldown_left("anthropic", MODEL) <= 31


async def test_a_pause_that_starts_while_a_task_waits_sends_it_after_the_pause(
    llm: AnthropicLlm, redis: Redis, server: FakeProvider
) -> None:
    rate = limiter(redis, requests_per_minute=300)  # 0.2 s apart
    paused_at: list[float] = []

    async def pause_once() -> None:
        if not paused_at:
            paused_at.append(time.monotonic())
            await rate.cool_down("anthropic", MODEL, 0.5)

    idle, waits = Idle(on_enter=pause_once), []
    await rate.reserve("anthropic", MODEL, 1, 1)  # another worker's call: this one waits 0.2 s

    await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=idle, on_wait=waits.append)

    assert idle.entered == 2  # waited for its slot, found the pause, gave the slot back, waited again
    assert 0.45 < sum(waits) < 1.5
    [served] = server.served
    assert served.at - paused_at[0] >= 0.49  # the fake provider runs on this process's monotonic clock


async def test_a_redis_failure_after_the_call_keeps_the_answer(
    fake_redis: fakeredis.FakeServer, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    class Disconnecting(OfflineLlm):
        async def generate_content_async(
            self, messages: Sequence[Message], request: LlmRequest | None = None
        ) -> LlmResponse:
            fake_redis.connected = False
            return await super().generate_content_async(messages, request)

    rate = RateLimiter(redis, [RateLimit("offline", None, input_tokens_per_minute=600)])

    with caplog.at_level(logging.WARNING, logger="coditect.llm.capacity"):
        response = await call_with_capacity(Disconnecting(), HELLO, REQUEST, limiter=rate, idle=Idle())

    assert response.text.startswith("[offline offline-1")
    assert "rate limit: could not record offline/offline-1 usage" in caplog.text


async def test_a_redis_failure_after_a_429_keeps_the_providers_error(
    fake_redis: fakeredis.FakeServer,
    redis: Redis,
    server: FakeProvider,
    llm: AnthropicLlm,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Disconnecting(AnthropicLlm):
        async def generate_content_async(
            self, messages: Sequence[Message], request: LlmRequest | None = None
        ) -> LlmResponse:
            fake_redis.connected = False
            return await super().generate_content_async(messages, request)

    rate = limiter(redis, requests_per_minute=6000)
    server.plan(status=429, headers={"retry-after": "3"})

    with (
        caplog.at_level(logging.WARNING, logger="coditect.llm.capacity"),
        pytest.raises(TransientProviderError) as caught,
    ):
        await call_with_capacity(Disconnecting(llm.client, MODEL), HELLO, REQUEST, limiter=rate, idle=Idle())

    assert caught.value.status_code == 429
    assert "rate limit: could not pause anthropic/claude-test" in caplog.text


async def test_cancelling_a_waiting_task_sends_nothing(
    llm: AnthropicLlm, redis: Redis, server: FakeProvider
) -> None:
    rate = limiter(redis, requests_per_minute=12)  # 5 s apart
    await call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=Idle())
    entered = asyncio.Event()

    async def signal() -> None:
        entered.set()

    task = asyncio.create_task(
        call_with_capacity(llm, HELLO, REQUEST, limiter=rate, idle=Idle(on_enter=signal))
    )
    await entered.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(server.requests) == 1
