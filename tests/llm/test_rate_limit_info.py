"""RateLimitInfo: the providers' rate-limit headers, Anthropic's and the OpenAI style."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coditect.llm.base import Allowance, RateLimitInfo, snapshot_of

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def test_anthropic_headers_give_every_dimension_with_resets_relative_to_the_response_date() -> None:
    headers = {
        "Date": "Mon, 30 Nov 2026 12:00:00 GMT",
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-11-30T12:00:01.200Z",
        "anthropic-ratelimit-input-tokens-limit": "30000",
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": "2026-11-30T12:00:12Z",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "7000",
        "anthropic-ratelimit-output-tokens-reset": "2026-11-30T12:00:07.5+00:00",
        "anthropic-ratelimit-tokens-limit": "8000",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2026-11-30T12:00:12Z",
    }

    # The worker's own clock is an hour off: the response's date is what counts.
    info = RateLimitInfo.from_headers(headers, now=datetime(2026, 11, 30, 13, 0, tzinfo=UTC))

    assert info == RateLimitInfo(
        requests=Allowance(50, 49, 1.2),
        input_tokens=Allowance(30000, 0, 12.0),
        output_tokens=Allowance(8000, 7000, 7.5),
        tokens=Allowance(8000, 0, 12.0),
    )
    assert info.exhausted_for_s() == 12.0


def test_without_a_date_header_resets_count_from_now() -> None:
    info = RateLimitInfo.from_headers(
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2026-11-30T12:00:03",
        },
        now=NOW,
    )

    assert info == RateLimitInfo(requests=Allowance(None, 0, 3.0))
    assert info.exhausted_for_s() == 3.0


@pytest.mark.parametrize(
    ("reset", "seconds"),
    [
        ("1s", 1.0),
        ("2m0s", 120.0),
        ("6m0s", 300.0),
        ("1m30.5s", 90.5),
        ("120ms", 0.12),
        ("0.5", 0.5),
        ("2", 2.0),
        ("1h2m", 300.0),
    ],
)
def test_openai_style_durations(reset: str, seconds: float) -> None:
    # Resets beyond MAX_RESET_S (300 s) are capped there, like retry-after.
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": reset,
        "X-RateLimit-Remaining-Tokens": "1000",
    }

    info = RateLimitInfo.from_headers(headers)

    assert info is not None
    assert info.requests == Allowance(60, 0, pytest.approx(seconds))
    assert info.tokens == Allowance(None, 1000, None)
    assert info.exhausted_for_s() == pytest.approx(seconds)


@pytest.mark.parametrize("reset", ["soon", "1x", "-3s", "s", "nan", "inf", ""])
def test_a_reset_that_is_not_a_duration_is_unknown(reset: str) -> None:
    info = RateLimitInfo.from_headers(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": reset}
    )

    assert info is not None
    assert info.requests is not None
    assert info.requests.reset_s is None or info.requests.reset_s == 0.0
    assert info.exhausted_for_s() is None


def test_invalid_numbers_and_dates_are_dropped_not_raised() -> None:
    headers = {
        "Date": "not a date",
        "anthropic-ratelimit-requests-limit": "many",
        "anthropic-ratelimit-requests-remaining": "-1",
        "anthropic-ratelimit-requests-reset": "tomorrow",
        "anthropic-ratelimit-tokens-remaining": "5",
    }

    assert RateLimitInfo.from_headers(headers, now=NOW) == RateLimitInfo(tokens=Allowance(None, 5, None))


def test_a_reset_in_the_past_is_zero_and_a_far_one_is_capped() -> None:
    info = RateLimitInfo.from_headers(
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2026-11-30T11:59:00Z",
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": "2026-12-01T12:00:00Z",
        },
        now=NOW,
    )

    assert info is not None
    assert info.requests == Allowance(None, 0, 0.0)
    assert info.tokens == Allowance(None, 0, 300.0)
    assert info.exhausted_for_s() == 300.0


def test_no_rate_limit_headers_is_none() -> None:
    assert RateLimitInfo.from_headers({"content-type": "application/json", "retry-after": "3"}) is None


def test_nothing_exhausted_means_no_pause() -> None:
    info = RateLimitInfo(requests=Allowance(50, 1, 1.0), tokens=Allowance(100, 0, None))

    assert info.exhausted_for_s() is None


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-sonnet-4-5", None),
        ("claude-opus-4-1", None),
        ("model-2025", None),
    ],
)
def test_snapshot_of(model: str, base: str | None) -> None:
    assert snapshot_of(model) == base
