"""RateLimiter's arithmetic on fakeredis: spacing, token costs, several limits, the horizon, cooldowns,
corrections, header observations and key expiry.

Reservations carry their start on the server's clock, so spacing is asserted exactly; ``wait_s`` is
relative to the moment of the call and only bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path

import fakeredis
import pytest
from redis.asyncio import Redis

from coditect.keys import LIMIT_GRACE_MS, cooldown_key, limit_key
from coditect.llm.base import Allowance, Message, RateLimitInfo
from coditect.llm.limits import (
    MAX_REMEMBERED_PROMPTS,
    RateLimit,
    RateLimiter,
    Reservation,
    estimate_input_tokens,
)
from coditect.models import TokenUsage
from coditect.settings import Settings
from tests.support.fake_provider import refused_port

SECOND_US = 1_000_000
A = "anthropic"
MODEL = "claude-test"


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    yield client
    await client.aclose()


def limiter(redis: Redis, *limits: RateLimit, horizon_s: float = 10.0) -> RateLimiter:
    return RateLimiter(redis, limits, horizon_s=horizon_s)


async def starts(
    limiter: RateLimiter, count: int, model: str = MODEL, tokens: tuple[int, int] = (1, 1)
) -> list[int]:
    reservations = [await limiter.reserve(A, model, *tokens) for _ in range(count)]
    assert all(r.granted for r in reservations)
    return [r.start_us or 0 for r in reservations]


def gaps(values: list[int]) -> list[int]:
    return [later - earlier for earlier, later in pairwise(values)]


async def test_requests_are_spaced_one_emission_interval_apart(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, MODEL, requests_per_minute=120))

    reservations = [await rate.reserve(A, MODEL, 10, 10) for _ in range(4)]

    assert gaps([r.start_us or 0 for r in reservations]) == [SECOND_US // 2] * 3
    # Waits are from each call's own moment: generous bounds for a loaded machine.
    for index, reservation in enumerate(reservations):
        assert index * 0.5 - 0.25 < reservation.wait_s <= index * 0.5


async def test_concurrent_reservations_get_distinct_evenly_spaced_starts(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, None, requests_per_minute=6000), horizon_s=5)

    reservations = await asyncio.gather(*(rate.reserve(A, MODEL, 1, 1) for _ in range(50)))

    assert gaps(sorted(r.start_us or 0 for r in reservations)) == [10_000] * 49


async def test_tokens_cost_their_share_of_the_minute(redis: Redis) -> None:
    # 6,000 input tokens a minute: 10 ms each; 600 output tokens a minute: 100 ms each.
    rate = limiter(redis, RateLimit(A, MODEL, input_tokens_per_minute=6000, output_tokens_per_minute=600))

    first = await rate.reserve(A, MODEL, 300, 5)  # 3 s of input, 0.5 s of output
    second = await rate.reserve(A, MODEL, 10, 40)  # 0.1 s of input, 4 s of output
    third = await rate.reserve(A, MODEL, 1, 1)

    assert gaps([first.start_us or 0, second.start_us or 0, third.start_us or 0]) == [
        3 * SECOND_US,
        4 * SECOND_US,
    ]


async def test_the_provider_limit_and_the_model_limit_both_apply(redis: Redis) -> None:
    rate = limiter(
        redis,
        RateLimit(A, None, requests_per_minute=120),  # every anthropic model together: 0.5 s apart
        RateLimit(A, MODEL, requests_per_minute=60),  # this model: 1 s apart
        RateLimit("openai", None, requests_per_minute=1),  # another provider: no effect here
    )

    first = await rate.reserve(A, MODEL, 1, 1)
    other_model = await rate.reserve(A, "claude-other", 1, 1)
    second = await rate.reserve(A, MODEL, 1, 1)
    third_model = await rate.reserve(A, "claude-third", 1, 1)

    origin = first.start_us or 0
    assert [(r.start_us or 0) - origin for r in (other_model, second, third_model)] == [
        SECOND_US // 2,
        SECOND_US,
        3 * SECOND_US // 2,
    ]
    assert not rate.applies_to("offline", MODEL)
    assert rate.applies_to("openai", "anything")


async def test_a_dated_snapshot_shares_its_models_limit(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, "claude-sonnet-4-5", requests_per_minute=60))

    alias = await rate.reserve(A, "claude-sonnet-4-5", 1, 1)
    snapshot = await rate.reserve(A, "claude-sonnet-4-5-20250929", 1, 1)

    assert (snapshot.start_us or 0) - (alias.start_us or 0) == SECOND_US
    assert not rate.applies_to(A, "claude-sonnet-4-5-extra")


async def test_beyond_the_horizon_nothing_is_reserved_and_the_task_is_told_when_capacity_frees(
    redis: Redis,
) -> None:
    rate = limiter(redis, RateLimit(A, MODEL, requests_per_minute=60), horizon_s=2)
    granted = await starts(rate, 3)  # at 0, 1 and 2 s: the last one waits exactly the horizon

    refused = [await rate.reserve(A, MODEL, 1, 1) for _ in range(2)]

    assert [r.granted for r in refused] == [False, False]
    assert [r.start_us for r in refused] == [granted[-1] + SECOND_US] * 2  # the second was not charged
    for reservation in refused:
        assert 2.5 < reservation.wait_s <= 3.0


async def test_a_cooldown_holds_every_call_until_it_ends(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, None, requests_per_minute=6000), horizon_s=2)

    await rate.cool_down(A, MODEL, 3)
    refused = await rate.reserve(A, MODEL, 1, 1)
    other = await rate.reserve(A, "claude-other", 1, 1)

    assert not refused.granted
    assert 2.5 < refused.wait_s <= 3.0
    assert other.granted  # the pause is for that model only
    assert other.wait_s < 0.25


async def test_within_the_horizon_a_call_is_reserved_for_the_end_of_the_cooldown(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, MODEL, requests_per_minute=60), horizon_s=5)

    await rate.cool_down(A, MODEL, 3)
    left = await rate.cooldown_left(A, MODEL)
    first, second = [await rate.reserve(A, MODEL, 1, 1) for _ in range(2)]

    assert 2.5 < left <= 3.0
    assert first.granted
    assert second.granted
    assert 2.5 < first.wait_s <= 3.0
    assert (second.start_us or 0) - (first.start_us or 0) == SECOND_US


async def test_a_longer_cooldown_wins_over_a_shorter_one(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, MODEL, requests_per_minute=60))

    await rate.cool_down(A, MODEL, 10)
    await rate.cool_down(A, MODEL, 2)
    await rate.cool_down(A, MODEL, 0)
    await rate.cool_down(A, MODEL, float("nan"))

    assert 9.5 < await rate.cooldown_left(A, MODEL) <= 10
    assert 9_500 < await redis.pttl(cooldown_key(A, MODEL)) <= 10_000

    await rate.cool_down(A, MODEL, 20)

    assert 19.5 < await rate.cooldown_left(A, MODEL) <= 20


async def test_settling_less_than_reserved_gives_capacity_back(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, MODEL, input_tokens_per_minute=6000, output_tokens_per_minute=600))
    first = await rate.reserve(A, MODEL, 300, 30)  # 3 s of input, 3 s of output reserved

    # 100 input tokens plus 50 written to the cache (1.5 s); 1,000 read from it do not count.
    await rate.settle(
        first, TokenUsage(input_tokens=100, cache_write_tokens=50, cache_read_tokens=1000, output_tokens=10)
    )
    second = await rate.reserve(A, MODEL, 1, 1)

    assert (second.start_us or 0) - (first.start_us or 0) == 3 * SECOND_US // 2


async def test_settling_more_than_reserved_charges_the_difference(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, MODEL, input_tokens_per_minute=6000))
    first = await rate.reserve(A, MODEL, 100, 1)

    await rate.settle(first, TokenUsage(input_tokens=400, output_tokens=1))
    second = await rate.reserve(A, MODEL, 1, 1)

    assert (second.start_us or 0) - (first.start_us or 0) == 4 * SECOND_US


async def test_an_earlier_calls_correction_never_lets_a_call_start_with_the_latest(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, MODEL, input_tokens_per_minute=6000))  # 10 ms a token
    first = await rate.reserve(A, MODEL, 100, 1)  # 0 to 1 s
    second = await rate.reserve(A, MODEL, 100, 1)  # 1 to 2 s

    await rate.settle(first, TokenUsage(input_tokens=0))  # an earlier call: nothing below the latest's end
    third = await rate.reserve(A, MODEL, 100, 1)
    await rate.settle(third, TokenUsage(input_tokens=10))  # the latest call itself: down to its actual use
    fourth = await rate.reserve(A, MODEL, 1, 1)

    origin = first.start_us or 0
    assert [(r.start_us or 0) - origin for r in (second, third, fourth)] == [
        SECOND_US,
        2 * SECOND_US,
        2 * SECOND_US + SECOND_US // 10,
    ]


async def test_a_correction_into_the_past_removes_the_key(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, MODEL, input_tokens_per_minute=6000))
    reservation = await rate.reserve(A, MODEL, 100, 1)

    await rate.settle(reservation, TokenUsage(output_tokens=1))  # no input at all: the TAT is its start

    assert await redis.exists(limit_key("input_tokens", A, MODEL)) == 0


async def test_settling_after_the_key_expired_changes_nothing(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, MODEL, input_tokens_per_minute=6000))
    reservation = await rate.reserve(A, MODEL, 100, 1)
    await redis.delete(limit_key("input_tokens", A, MODEL))

    await rate.settle(reservation, TokenUsage(input_tokens=5000))

    assert await redis.exists(limit_key("input_tokens", A, MODEL)) == 0


async def test_release_gives_back_every_dimension(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, MODEL, requests_per_minute=60, input_tokens_per_minute=600))
    first = await rate.reserve(A, MODEL, 10, 1)  # 1 s of requests, 1 s of input
    unused = await rate.reserve(A, MODEL, 30, 1)  # starts at 1 s; 3 s of input

    await rate.release(unused)
    third = await rate.reserve(A, MODEL, 1, 1)

    assert (unused.start_us or 0) - (first.start_us or 0) == SECOND_US
    assert (third.start_us or 0) - (first.start_us or 0) == SECOND_US


async def test_keys_expire_a_grace_period_after_their_time(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, None, requests_per_minute=6, output_tokens_per_minute=60))

    await rate.reserve(A, MODEL, 1, 1)  # requests: 10 s ahead; output: 1 s ahead
    await rate.reserve(A, MODEL, 1, 1)  # requests: 20 s ahead; output: 11 s ahead (starts at 10 s)

    assert (
        19_500 + LIMIT_GRACE_MS < await redis.pttl(limit_key("requests", A, None)) <= 20_000 + LIMIT_GRACE_MS
    )
    assert (
        10_500 + LIMIT_GRACE_MS
        < await redis.pttl(limit_key("output_tokens", A, None))
        <= 11_000 + LIMIT_GRACE_MS
    )
    assert await redis.exists(limit_key("input_tokens", A, None)) == 0


async def test_an_exhausted_allowance_in_the_headers_pauses_the_model(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, MODEL, requests_per_minute=60))

    await rate.observe(A, MODEL, RateLimitInfo(requests=Allowance(60, 3, 20.0)))
    await rate.observe(A, MODEL, None)
    assert await rate.cooldown_left(A, MODEL) == 0

    await rate.observe(A, MODEL, RateLimitInfo(requests=Allowance(60, 3, 20.0), tokens=Allowance(10, 0, 4.0)))
    assert 3.5 < await rate.cooldown_left(A, MODEL) <= 4.0


async def test_without_an_applicable_limit_nothing_touches_redis() -> None:
    with refused_port() as port:
        unreachable = Redis(port=port, socket_connect_timeout=0.5)
        rate = RateLimiter(unreachable, [RateLimit(A, "claude-limited", requests_per_minute=1)])
        try:
            reservation = await rate.reserve(A, MODEL, 100, 100)
            await rate.settle(reservation, TokenUsage(input_tokens=5))
            await rate.release(reservation)
            await rate.cool_down(A, MODEL, 30)
            await rate.observe(A, MODEL, RateLimitInfo(tokens=Allowance(1, 0, 5.0)))
            left = await rate.cooldown_left(A, MODEL)
        finally:
            await unreachable.aclose()

    assert reservation == Reservation(A, MODEL, granted=True, limited=False)
    assert left == 0


async def test_from_settings_reads_the_limits_file_and_the_horizon(redis: Redis, tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text('[[limits]]\nprovider = "anthropic"\nrequests_per_minute = 60\n')

    rate = RateLimiter.from_settings(
        redis, Settings(_env_file=None, limits_file=path, rate_limit_horizon_s=1.5)
    )  # type: ignore[call-arg]

    assert rate.limits == (RateLimit(A, None, requests_per_minute=60),)
    assert rate.horizon_s == 1.5
    assert "limits=1" in repr(rate)
    assert RateLimiter.from_settings(redis, Settings(_env_file=None)).limits == ()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("system", "messages", "expected"),
    [
        ("", [], 1),
        ("", [Message("user", "")], 4),
        ("abcd", [Message("user", "abcde")], 1 + 2 + 4),
        (
            "x" * 400,
            [Message("user", "hi"), Message("assistant", "ok"), Message("user", "y" * 41)],
            100 + 1 + 1 + 11 + 12,
        ),
    ],
)
def test_input_estimate_is_four_characters_a_token_plus_framing(
    system: str, messages: list[Message], expected: int
) -> None:
    assert estimate_input_tokens(system, messages) == expected


def test_a_system_prompt_seen_in_the_prompt_cache_is_left_out_of_the_estimate(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, None, input_tokens_per_minute=6000))
    system, messages = "s" * 400, [Message("user", "hello")]
    full = estimate_input_tokens(system, messages)

    rate.note_prompt_cache(A, MODEL, system, TokenUsage(input_tokens=9))  # not cached: nothing learnt
    assert rate.estimate_input_tokens(A, MODEL, system, messages) == full

    rate.note_prompt_cache(A, MODEL, system, TokenUsage(input_tokens=9, cache_write_tokens=100))

    assert rate.estimate_input_tokens(A, MODEL, system, messages) == estimate_input_tokens("", messages)
    assert rate.estimate_input_tokens(A, "claude-other", system, messages) == full
    assert rate.estimate_input_tokens(A, MODEL, "another prompt", messages) == estimate_input_tokens(
        "another prompt", messages
    )


def test_remembering_many_prompts_keeps_the_live_ones(redis: Redis) -> None:
    rate = limiter(redis, RateLimit(A, None, input_tokens_per_minute=6000))
    cached = TokenUsage(cache_read_tokens=10)
    messages = [Message("user", "hello")]

    for index in range(MAX_REMEMBERED_PROMPTS + 1):
        rate.note_prompt_cache(A, MODEL, f"prompt {index}", cached)

    assert rate.estimate_input_tokens(A, MODEL, "prompt 0", messages) == estimate_input_tokens("", messages)
    assert rate.estimate_input_tokens(
        A, MODEL, f"prompt {MAX_REMEMBERED_PROMPTS}", messages
    ) == estimate_input_tokens("", messages)
