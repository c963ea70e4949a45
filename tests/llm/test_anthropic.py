"""AnthropicLlm through the real SDK (httpx2 transport) against the fake provider on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import pytest

from coditect.errors import (
    ConfigurationError,
    PermanentProviderError,
    TransientProviderError,
)
from coditect.llm.anthropic import DEFAULT_ANTHROPIC_MODEL, AnthropicLlm, create_anthropic_client
from coditect.llm.base import LlmRequest, Message
from coditect.models import TokenUsage
from coditect.settings import Settings
from tests.support.fake_provider import ANTHROPIC_PATH, FakeProvider, refused_port
from tests.support.provider_cases import PERMANENT_STATUS_HINTS, assert_key_hidden

KEY = "sk-test-anthropic-5f1c9e0b7a2d"
HELLO = [Message("user", "hello world")]


def make_settings(base_url: str | None, **overrides: Any) -> Settings:
    return Settings(_env_file=None, anthropic_api_key=KEY, anthropic_base_url=base_url, **overrides)  # type: ignore[call-arg]


@pytest.fixture
def server() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
async def llm(server: FakeProvider) -> AsyncIterator[AnthropicLlm]:
    client = create_anthropic_client(make_settings(server.url, llm_timeout_s=5))
    try:
        yield AnthropicLlm(client, "claude-test")
    finally:
        await client.close()


async def test_success_returns_text_usage_and_stop_reason(llm: AnthropicLlm) -> None:
    messages = [
        Message("user", "Summarise the plan"),
        Message("assistant", "ok"),
        Message("user", "hello world"),
    ]

    response = await llm.generate_content_async(messages, LlmRequest(system="be brief", max_tokens=100))

    assert response.text == "echo: hello world"
    assert (response.provider, response.model, response.stop_reason) == (
        "anthropic",
        "claude-test",
        "end_turn",
    )
    # The fake counts ceil(chars / 4) per text, plus 3 per message: 2 + (5+3) + (1+3) + (3+3) in, 5 out;
    # the system prompt's 2 are a prompt-cache write, not plain input.
    assert response.usage == TokenUsage(input_tokens=18, output_tokens=5, cache_write_tokens=2)


async def test_request_carries_key_as_bearer_and_system_at_top_level(
    llm: AnthropicLlm, server: FakeProvider
) -> None:
    await llm.generate_content_async(HELLO, LlmRequest(system="be brief", max_tokens=77))

    [request] = server.requests
    assert request.path == ANTHROPIC_PATH
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["x-stainless-retry-count"] == "0"
    # The key travels in exactly one header and nowhere in the body.
    assert [name for name, value in request.headers.items() if KEY in value] == ["authorization"]
    assert KEY not in str(request.body)
    assert request.body == {
        "model": "claude-test",
        "max_tokens": 77,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hello world"}],
    }


async def test_no_system_prompt_omits_the_field(llm: AnthropicLlm, server: FakeProvider) -> None:
    await llm.generate_content_async(HELLO)

    [request] = server.requests
    assert "system" not in request.body
    assert request.body["max_tokens"] == LlmRequest().max_tokens


async def test_max_tokens_reached_is_a_stop_reason_not_an_error(llm: AnthropicLlm) -> None:
    response = await llm.generate_content_async([Message("user", "word " * 100)], LlmRequest(max_tokens=3))

    assert response.stop_reason == "max_tokens"
    assert response.usage.output_tokens == 3


async def test_concurrent_calls_share_one_client(llm: AnthropicLlm, server: FakeProvider) -> None:
    prompts = [f"prompt {i}" for i in range(20)]

    responses = await asyncio.gather(*(llm.generate_content_async([Message("user", p)]) for p in prompts))

    assert [r.text for r in responses] == [f"echo: {p}" for p in prompts]
    assert len(server.requests) == 20


@pytest.mark.parametrize(
    ("status", "headers", "retry_after_s"),
    [
        (429, {"retry-after": "2"}, 2.0),
        (429, {"retry-after-ms": "1500"}, 1.5),
        (429, {"retry-after": "3600"}, 300.0),
        (429, {}, None),
        (529, {}, None),
        (500, {}, None),
        (503, {"retry-after": "7"}, 7.0),
        (408, {}, None),
        (409, {}, None),
    ],
)
async def test_retryable_statuses_are_transient_and_sent_once(
    llm: AnthropicLlm, server: FakeProvider, status: int, headers: dict[str, str], retry_after_s: float | None
) -> None:
    server.plan(status=status, headers=headers)

    with pytest.raises(TransientProviderError) as caught:
        await llm.generate_content_async(HELLO)

    err = caught.value
    assert err.status_code == status
    assert err.retry_after_s == retry_after_s
    assert f"fake provider error {status}" in err.message
    assert isinstance(err.__cause__, anthropic.APIStatusError)
    assert len(server.requests) == 1  # max_retries=0: the queue, not the SDK, retries
    assert_key_hidden(err, KEY)


@pytest.mark.parametrize(
    ("status", "hint"),
    PERMANENT_STATUS_HINTS,
)
async def test_client_errors_are_permanent_and_sent_once(
    llm: AnthropicLlm, server: FakeProvider, status: int, hint: str
) -> None:
    server.plan(status=status, message="the server's own explanation")

    with pytest.raises(PermanentProviderError) as caught:
        await llm.generate_content_async(HELLO)

    err = caught.value
    assert err.status_code == status
    assert str(err).startswith(f"anthropic (HTTP {status}): the server's own explanation")
    assert hint in str(err)
    assert "OPENAI" not in str(err)
    if status == 401:
        assert "check ANTHROPIC_API_KEY" in str(err)
    assert len(server.requests) == 1
    assert_key_hidden(err, KEY)


async def test_a_key_echoed_by_the_server_is_redacted(llm: AnthropicLlm, server: FakeProvider) -> None:
    server.plan(status=401, message=f"invalid x-api-key: {KEY}")

    with pytest.raises(PermanentProviderError) as caught:
        await llm.generate_content_async(HELLO)

    assert "invalid x-api-key: ***" in str(caught.value)
    assert_key_hidden(caught.value, KEY)


async def test_non_json_error_body_becomes_the_message(llm: AnthropicLlm, server: FakeProvider) -> None:
    server.plan(status=502, body="<html>502 Bad Gateway</html>")

    with pytest.raises(TransientProviderError, match="502 Bad Gateway"):
        await llm.generate_content_async(HELLO)


async def test_connection_refused_is_transient() -> None:
    with refused_port() as port:
        client = create_anthropic_client(make_settings(f"http://127.0.0.1:{port}", llm_timeout_s=5))
        try:
            with pytest.raises(TransientProviderError) as caught:
                await AnthropicLlm(client, "claude-test").generate_content_async(HELLO)
        finally:
            await client.close()

    err = caught.value
    assert str(err).startswith(f"anthropic: cannot connect to http://127.0.0.1:{port}")
    assert err.status_code is None
    assert_key_hidden(err, KEY)


async def test_read_timeout_is_transient_and_fast(server: FakeProvider) -> None:
    server.plan(delay_s=10)
    client = create_anthropic_client(make_settings(server.url, llm_timeout_s=0.2))
    started = time.monotonic()
    try:
        with pytest.raises(TransientProviderError) as caught:
            await AnthropicLlm(client, "claude-test").generate_content_async(HELLO)
    finally:
        await client.close()

    assert time.monotonic() - started < 2.0
    assert "request timed out after 0.2 s (read timeout" in str(caught.value)
    assert len(server.requests) == 1
    assert_key_hidden(caught.value, KEY)


async def test_connection_reset_is_transient(llm: AnthropicLlm, server: FakeProvider) -> None:
    server.plan(reset=True)

    with pytest.raises(TransientProviderError, match="failed: ReadError") as caught:
        await llm.generate_content_async(HELLO)

    assert len(server.requests) == 1
    assert_key_hidden(caught.value, KEY)


@pytest.mark.parametrize("body", ["this is not json", {"unexpected": "shape"}])
async def test_malformed_success_body_is_permanent(
    llm: AnthropicLlm, server: FakeProvider, body: Any
) -> None:
    server.plan(status=200, body=body)

    with pytest.raises(PermanentProviderError, match=r"malformed response from http://127\.0\.0\.1"):
        await llm.generate_content_async(HELLO)


async def test_schema_violation_under_strict_validation_is_permanent(server: FakeProvider) -> None:
    server.plan(status=200, body={"type": "message", "content": "not a list of blocks"})
    client = anthropic.AsyncAnthropic(
        api_key=KEY, base_url=server.url, max_retries=0, timeout=5, _strict_response_validation=True
    )
    try:
        with pytest.raises(
            PermanentProviderError, match=r"malformed response from .*APIResponseValidationError"
        ):
            await AnthropicLlm(client, "claude-test").generate_content_async(HELLO)
    finally:
        await client.close()


class _RefuseWithKey(anthropic.Middleware):
    async def handle_async(self, request: Any, call_next: Any) -> Any:
        raise anthropic.RetryableError(f"middleware refused a request signed with {KEY}")


async def test_other_sdk_errors_are_permanent_and_redacted(server: FakeProvider) -> None:
    client = anthropic.AsyncAnthropic(
        api_key=KEY, base_url=server.url, max_retries=0, timeout=5, middleware=[_RefuseWithKey()]
    )
    try:
        with pytest.raises(
            PermanentProviderError, match=r"failed: RetryableError: middleware refused"
        ) as caught:
            await AnthropicLlm(client, "claude-test").generate_content_async(HELLO)
    finally:
        await client.close()

    assert_key_hidden(caught.value, KEY)
    assert server.requests == []


async def test_cancellation_propagates_untranslated(llm: AnthropicLlm, server: FakeProvider) -> None:
    server.plan(delay_s=10)
    task = asyncio.create_task(llm.generate_content_async(HELLO))
    await asyncio.to_thread(server.wait_for_requests, 1)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_client_is_built_from_settings() -> None:
    client = create_anthropic_client(make_settings("http://127.0.0.1:9", llm_timeout_s=42))
    try:
        assert client.max_retries == 0
        assert client.timeout == 42
        assert str(client.base_url).rstrip("/") == "http://127.0.0.1:9"
        assert client.api_key == KEY
        assert KEY not in repr(AnthropicLlm(client, DEFAULT_ANTHROPIC_MODEL))
    finally:
        await client.close()


@pytest.mark.parametrize("key", [None, ""])
def test_missing_key_is_a_configuration_error(key: str | None) -> None:
    settings = Settings(_env_file=None, anthropic_api_key=key)  # type: ignore[call-arg]

    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        create_anthropic_client(settings)


async def test_system_prompt_is_written_to_the_prompt_cache_then_read_from_it(
    llm: AnthropicLlm, server: FakeProvider
) -> None:
    system = "You are a careful reviewer. " * 20  # 560 characters: 140 tokens for the fake
    request = LlmRequest(system=system, max_tokens=50)

    first = await llm.generate_content_async(HELLO, request)
    second = await llm.generate_content_async(HELLO, request)
    other = await llm.generate_content_async(HELLO, LlmRequest(system="another prompt", max_tokens=50))

    assert first.usage == TokenUsage(input_tokens=6, output_tokens=5, cache_write_tokens=140)
    assert second.usage == TokenUsage(input_tokens=6, output_tokens=5, cache_read_tokens=140)
    assert other.usage.cache_write_tokens == 4
    assert other.usage.cache_read_tokens == 0
    assert [r.body["system"][0]["cache_control"] for r in server.requests] == [{"type": "ephemeral"}] * 3


@pytest.mark.parametrize(
    "cache_fields", [{}, {"cache_creation_input_tokens": None, "cache_read_input_tokens": None}]
)
async def test_absent_or_null_cache_counts_are_zero(
    llm: AnthropicLlm, server: FakeProvider, cache_fields: dict[str, Any]
) -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 7, "output_tokens": 2, **cache_fields},
    }
    server.plan(status=200, body=body)

    response = await llm.generate_content_async(HELLO)

    assert response.usage == TokenUsage(input_tokens=7, output_tokens=2)


async def test_rate_limit_headers_of_a_success_are_parsed(llm: AnthropicLlm, server: FakeProvider) -> None:
    await llm.generate_content_async(HELLO)

    response = await llm.generate_content_async(HELLO)

    info = response.rate_limit
    assert info is not None
    assert info.requests is not None
    assert info.input_tokens is not None
    assert info.output_tokens is not None
    # The fake's defaults (4,000 requests, 2,000,000 input tokens a minute) less what it served so far.
    assert (info.requests.limit, info.requests.remaining) == (4000, 3998)
    assert (info.input_tokens.limit, info.input_tokens.remaining) == (2_000_000, 2_000_000 - 2 * 6)
    assert info.requests.reset_s is not None
    assert 0 <= info.requests.reset_s <= 61
    assert info.tokens is not None
    assert info.exhausted_for_s() is None


async def test_a_429_carries_retry_after_and_the_exhausted_dimension(
    llm: AnthropicLlm, server: FakeProvider
) -> None:
    server.plan(
        status=429,
        headers={
            "retry-after": "7",
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-input-tokens-reset": "2099-01-01T00:00:00Z",
        },
    )

    with pytest.raises(TransientProviderError) as caught:
        await llm.generate_content_async(HELLO)

    err = caught.value
    assert (err.status_code, err.retry_after_s) == (429, 7.0)
    assert err.rate_limit is not None
    assert err.rate_limit.input_tokens is not None
    assert err.rate_limit.input_tokens.remaining == 0
    assert err.rate_limit.exhausted_for_s() == 300.0  # far resets are capped


async def test_the_fakes_own_limit_answers_429_with_its_headers() -> None:
    with FakeProvider(requests_per_minute=60) as server:
        client = create_anthropic_client(make_settings(server.url, llm_timeout_s=5))
        try:
            llm = AnthropicLlm(client, "claude-test")
            await llm.generate_content_async(HELLO)
            with pytest.raises(TransientProviderError) as caught:
                await llm.generate_content_async(HELLO)
        finally:
            await client.close()

        served = server.served

    err = caught.value
    assert (err.status_code, err.retry_after_s) == (429, 1.0)
    assert "rate limit exceeded (requests per minute)" in str(err)
    assert err.rate_limit is not None
    assert err.rate_limit.requests is not None
    assert err.rate_limit.requests.remaining == 0
    assert [(s.status, s.rate_limited) for s in served] == [(200, False), (429, True)]
