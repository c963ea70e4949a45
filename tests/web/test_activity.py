"""The last hour from the stream of all events, and rate-limit use against the limits file."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from arq.connections import ArqRedis

from coditect.agents import AgentRegistry
from coditect.keys import EVENTS_KEY
from coditect.llm.limits import RateLimit
from coditect.models import AgentConfig
from coditect.web.activity import Activity, Call
from coditect.web.capacity import limit_use, provider_resolver

NOW_MS = 1_800_000_000_000  # a minute boundary (30,000,000 minutes)


@pytest.fixture
async def redis() -> ArqRedis:
    fake = fakeredis.FakeAsyncRedis()
    return ArqRedis(connection_pool=fake.connection_pool)


async def add(redis: ArqRedis, at_ms: int, kind: str, **fields: str) -> None:
    entry: dict[Any, Any] = {"type": kind, "batch": "b", "task": "t", **fields}
    await redis.xadd(EVENTS_KEY, entry, id=f"{at_ms}-*")


async def test_activity_counts_finished_tasks_per_minute_incrementally(redis: ArqRedis) -> None:
    await add(redis, NOW_MS - 3_700_000, "task.succeeded", cost="1.0")  # older than the hour
    await add(redis, NOW_MS - 120_000, "task.started")
    await add(
        redis,
        NOW_MS - 119_000,
        "task.succeeded",
        cost="0.25",
        model="m",
        agent="a",
        **{"in": "10", "out": "5"},
    )
    await add(
        redis, NOW_MS - 118_000, "task.failed", cost="", model="m", agent="a", **{"in": "3", "out": "0"}
    )
    await add(redis, NOW_MS - 30_000, "task.timeout")
    await add(redis, NOW_MS - 20_000, "task.cancelled")
    activity = Activity()
    await activity.refresh(redis, NOW_MS)
    minutes = activity.minutes(NOW_MS)
    assert len(minutes) == 60
    assert minutes[-1][0] == NOW_MS
    two_ago = dict(minutes)[NOW_MS - 120_000]
    assert (two_ago.succeeded, two_ago.failed, two_ago.cancelled, two_ago.cost_usd, two_ago.tokens) == (
        1,
        1,
        0,
        0.25,
        18,
    )
    last = dict(minutes)[NOW_MS - 60_000]
    assert (last.failed, last.cancelled, last.finished) == (1, 1, 2)
    assert sum(m.finished for _, m in minutes) == 4
    assert activity.calls(NOW_MS - 200_000) == []  # older than a minute: pruned
    # The next refresh reads only what is new.
    await add(redis, NOW_MS + 1_000, "task.succeeded", model="m", agent="a", **{"in": "7", "out": "1"})
    await activity.refresh(redis, NOW_MS + 2_000)
    assert sum(m.finished for _, m in activity.minutes(NOW_MS + 2_000)) == 5
    assert activity.calls(NOW_MS) == [Call(NOW_MS + 1_000, "a", "m", 7, 1)]
    # An hour on, everything has left the window.
    await activity.refresh(redis, NOW_MS + 3_700_000)
    assert sum(m.finished for _, m in activity.minutes(NOW_MS + 3_700_000)) == 0


async def test_activity_on_an_empty_stream(redis: ArqRedis) -> None:
    activity = Activity()
    await activity.refresh(redis, NOW_MS)
    await activity.refresh(redis, NOW_MS)
    assert sum(m.finished for _, m in activity.minutes(NOW_MS)) == 0


def test_calls_count_against_their_provider_and_model_limits() -> None:
    limits = [
        RateLimit("anthropic", None, requests_per_minute=100),
        RateLimit("anthropic", "claude-sonnet-4-5", requests_per_minute=10, input_tokens_per_minute=1000),
        RateLimit("openai", "llama", output_tokens_per_minute=50),
    ]
    agents = AgentRegistry([AgentConfig(name="local", provider="openai"), AgentConfig(name="plain")])
    provider_of = provider_resolver(limits, agents, "anthropic")
    assert provider_of("plain", "claude-sonnet-4-5-20250929") == "anthropic"  # a snapshot of a limited model
    assert provider_of("local", "llama") == "openai"
    assert provider_of("local", "mistral") == "openai"  # the agent's provider
    assert provider_of("unknown", "mistral") == "anthropic"  # the default
    calls = [
        Call(0, "plain", "claude-sonnet-4-5-20250929", 100, 10),
        Call(0, "plain", "claude-haiku-4-5", 50, 5),
        Call(0, "local", "llama", 10, 30),
        Call(0, "local", "mistral", 10, 30),
    ]
    uses = limit_use(limits, calls, provider_of)
    provider, model, other = uses
    assert (provider.requests.used, provider.requests.limit, provider.input_tokens.limit) == (2, 100, None)
    assert provider.requests.percent == 2.0
    assert provider.input_tokens.percent is None
    assert (model.requests.used, model.input_tokens.used, model.input_tokens.percent) == (1, 100, 10.0)
    assert (other.model, other.output_tokens.used, other.output_tokens.percent) == ("llama", 30, 60.0)
