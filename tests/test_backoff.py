"""Riding out Redis outages: the backoff schedule, and the error that ends an outage too long."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from coditect import backoff
from coditect.backoff import Outage, outlasting_outages, redis_backoff_s
from coditect.errors import BackendUnavailableError, RedisOutageError


def test_the_delay_doubles_and_is_capped() -> None:
    assert [redis_backoff_s(n) for n in range(8)] == [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


async def test_an_outage_past_its_limit_ends_in_a_backend_error_caused_by_the_last_one() -> None:
    outage = Outage(limit_s=0)
    last = TimeoutError()

    with pytest.raises(RedisOutageError) as caught:
        await outage.backoff(last)

    assert isinstance(caught.value, BackendUnavailableError)
    assert caught.value.__cause__ is last
    assert caught.value.limit_s == 0
    assert str(caught.value) == "Redis did not answer for 0 s (last error: TimeoutError)"


def test_the_limit_is_read_when_the_outage_begins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Outage().limit_s == 60.0
    monkeypatch.setattr(backoff, "REDIS_OUTAGE_LIMIT_S", 1.5)
    assert Outage().limit_s == 1.5
    assert Outage(limit_s=3).limit_s == 3


async def test_a_step_is_sent_again_until_redis_answers() -> None:
    failures = [RedisConnectionError("Connection refused")]

    async def step() -> str:
        if failures:
            raise failures.pop()
        return "done"

    assert await outlasting_outages(step, timeout_s=1) == "done"


async def test_a_step_that_never_gets_through_ends_in_a_redis_outage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backoff, "REDIS_OUTAGE_LIMIT_S", 0.0)

    async def step() -> None:
        raise RedisConnectionError("Connection refused")

    with pytest.raises(RedisOutageError, match=r"last error: Connection refused\)$"):
        await outlasting_outages(step, timeout_s=1)


async def test_an_outage_that_is_over_starts_counting_afresh() -> None:
    outage = Outage(limit_s=60)
    await outage.backoff(TimeoutError())
    assert (outage.failures, outage.since is not None) == (1, True)
    outage.over()
    assert (outage.failures, outage.since) == (0, None)
