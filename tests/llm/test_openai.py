"""OpenAiLlm over a real httpx.AsyncClient against the fake provider on loopback."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coditect.errors import PermanentProviderError, TransientProviderError
from coditect.llm.base import LlmRequest, Message
from coditect.llm.factory import LlmFactory
from coditect.llm.openai import OpenAiLlm
from coditect.models import TokenUsage
from coditect.settings import Settings
from tests.support.fake_provider import OPENAI_PATH, FakeProvider, refused_port
from tests.support.provider_cases import PERMANENT_STATUS_HINTS, assert_key_hidden

KEY = "sk-test-openai-8d3b6a41e2f0"
HELLO = [Message("user", "hello world")]
FAKE_PROVIDER_SCRIPT = Path(__file__).resolve().parents[1] / "support" / "fake_provider.py"


@pytest.fixture
def server() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=5.0)) as client:
        yield client


@pytest.fixture
def llm(server: FakeProvider, http: httpx.AsyncClient) -> OpenAiLlm:
    return OpenAiLlm(http, "local-model", base_url=f"{server.url}/v1", api_key=KEY)


async def test_success_returns_text_usage_and_finish_reason(llm: OpenAiLlm) -> None:
    messages = [
        Message("user", "Summarise the plan"),
        Message("assistant", "ok"),
        Message("user", "hello world"),
    ]

    response = await llm.generate_content_async(messages, LlmRequest(system="be brief", max_tokens=100))

    assert response.text == "echo: hello world"
    assert (response.provider, response.model, response.stop_reason) == ("openai", "local-model", "stop")
    # The fake counts ceil(chars / 4) per text, plus 3 per message: 2 + (5+3) + (1+3) + (3+3) in, 5 out.
    assert (response.usage.input_tokens, response.usage.output_tokens) == (20, 5)


async def test_request_shape_system_first_and_bearer_key(llm: OpenAiLlm, server: FakeProvider) -> None:
    await llm.generate_content_async(HELLO, LlmRequest(system="be brief", max_tokens=77))

    [request] = server.requests
    assert request.path == OPENAI_PATH
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert [name for name, value in request.headers.items() if KEY in value] == ["authorization"]
    assert request.body == {
        "model": "local-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello world"},
        ],
        "max_tokens": 77,
        "stream": False,
    }


async def test_no_key_sends_no_authorization_and_no_system_message(
    server: FakeProvider, http: httpx.AsyncClient
) -> None:
    # A trailing slash on the base URL is tolerated.
    llm = OpenAiLlm(http, "local-model", base_url=f"{server.url}/v1/", api_key=None)

    await llm.generate_content_async(HELLO)

    [request] = server.requests
    assert request.path == OPENAI_PATH
    assert "authorization" not in request.headers
    assert request.body["messages"] == [{"role": "user", "content": "hello world"}]


async def test_max_tokens_reached_is_a_finish_reason(llm: OpenAiLlm) -> None:
    response = await llm.generate_content_async([Message("user", "word " * 100)], LlmRequest(max_tokens=3))

    assert response.stop_reason == "length"
    assert response.usage.output_tokens == 3


async def test_null_content_is_empty_text(llm: OpenAiLlm, server: FakeProvider) -> None:
    tool_call = {
        "choices": [{"message": {"role": "assistant", "content": None}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 9},
    }
    server.plan(status=200, body=tool_call)

    response = await llm.generate_content_async(HELLO)

    assert (response.text, response.stop_reason, response.usage.total_tokens) == ("", "tool_calls", 13)
    assert response.model == "local-model"  # the server named none


@pytest.mark.parametrize(
    ("status", "headers", "retry_after_s"),
    [
        (429, {"retry-after": "2"}, 2.0),
        (429, {"retry-after-ms": "250"}, 0.25),
        (429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        (529, {}, None),
        (500, {}, None),
        (503, {"retry-after": "7"}, 7.0),
        (408, {}, None),
        (409, {}, None),
    ],
)
async def test_retryable_statuses_are_transient(
    llm: OpenAiLlm, server: FakeProvider, status: int, headers: dict[str, str], retry_after_s: float | None
) -> None:
    server.plan(status=status, headers=headers)

    with pytest.raises(TransientProviderError) as caught:
        await llm.generate_content_async(HELLO)

    err = caught.value
    assert err.status_code == status
    assert err.retry_after_s == retry_after_s
    assert f"fake provider error {status}" in err.message
    assert len(server.requests) == 1
    assert_key_hidden(err, KEY)


@pytest.mark.parametrize(
    ("status", "hint"),
    PERMANENT_STATUS_HINTS,
)
async def test_client_errors_are_permanent(
    llm: OpenAiLlm, server: FakeProvider, status: int, hint: str
) -> None:
    server.plan(status=status, message="the server's own explanation")

    with pytest.raises(PermanentProviderError) as caught:
        await llm.generate_content_async(HELLO)

    err = caught.value
    assert err.status_code == status
    assert str(err).startswith(f"openai (HTTP {status}): the server's own explanation")
    assert hint in str(err)
    assert "ANTHROPIC" not in str(err)  # an OpenAI-compatible server refused the OpenAI key
    if status == 401:
        assert "check CODITECT_OPENAI_API_KEY" in str(err)
    assert len(server.requests) == 1
    assert_key_hidden(err, KEY)


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "model 'x' not found", "type": "invalid_request_error"}},  # OpenAI, vLLM
        {"error": "model 'x' not found"},  # llama.cpp and others
        {"object": "error", "message": "model 'x' not found", "code": 400},  # older vLLM
        {"detail": "model 'x' not found"},  # FastAPI-based servers
        "model 'x' not found",  # plain text
    ],
)
async def test_error_message_is_found_in_every_body_shape(
    llm: OpenAiLlm, server: FakeProvider, body: Any
) -> None:
    server.plan(status=400, body=body)

    with pytest.raises(PermanentProviderError, match=r"^openai \(HTTP 400\): model 'x' not found \("):
        await llm.generate_content_async(HELLO)


async def test_long_non_json_error_body_is_truncated(llm: OpenAiLlm, server: FakeProvider) -> None:
    server.plan(status=502, body="<html>" + "x" * 2000)

    with pytest.raises(TransientProviderError) as caught:
        await llm.generate_content_async(HELLO)

    assert caught.value.message == "<html>" + "x" * 494 + "..."


async def test_a_key_echoed_by_the_server_is_redacted(llm: OpenAiLlm, server: FakeProvider) -> None:
    server.plan(status=401, message=f"Incorrect API key provided: {KEY}")

    with pytest.raises(PermanentProviderError, match=r"provided: \*\*\*") as caught:
        await llm.generate_content_async(HELLO)

    assert_key_hidden(caught.value, KEY)


async def test_connection_refused_is_transient(http: httpx.AsyncClient) -> None:
    with refused_port() as port:
        llm = OpenAiLlm(http, "m", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
        with pytest.raises(TransientProviderError) as caught:
            await llm.generate_content_async(HELLO)

    err = caught.value
    assert str(err).startswith(f"openai: cannot connect to http://127.0.0.1:{port}/v1: ConnectError")
    assert err.status_code is None
    assert_key_hidden(err, KEY)


async def test_read_timeout_is_transient_and_fast(server: FakeProvider) -> None:
    server.plan(delay_s=10)
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.2, connect=5.0)) as http:
        llm = OpenAiLlm(http, "m", base_url=f"{server.url}/v1", api_key=KEY)
        with pytest.raises(TransientProviderError) as caught:
            await llm.generate_content_async(HELLO)

    assert time.monotonic() - started < 2.0
    assert "request timed out after 0.2 s (read timeout" in str(caught.value)
    assert len(server.requests) == 1


async def test_connection_reset_is_transient(llm: OpenAiLlm, server: FakeProvider) -> None:
    server.plan(reset=True)

    with pytest.raises(TransientProviderError, match="failed: ReadError"):
        await llm.generate_content_async(HELLO)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("{not json", "JSONDecodeError"),
        ({"choices": []}, "IndexError"),
        ({"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": -1}}, "ValidationError"),
    ],
)
async def test_malformed_success_body_is_permanent(
    llm: OpenAiLlm, server: FakeProvider, body: Any, problem: str
) -> None:
    server.plan(status=200, body=body)

    with pytest.raises(PermanentProviderError) as caught:
        await llm.generate_content_async(HELLO)

    assert str(caught.value).startswith(f"openai (HTTP 200): malformed response from {server.url}/v1/chat/")
    assert problem in str(caught.value)


async def test_base_url_without_scheme_is_permanent(http: httpx.AsyncClient) -> None:
    llm = OpenAiLlm(http, "m", base_url="localhost:8000/v1", api_key=KEY)

    with pytest.raises(PermanentProviderError, match="unsupported base URL 'localhost:8000/v1'"):
        await llm.generate_content_async(HELLO)


async def test_cancellation_propagates_untranslated(llm: OpenAiLlm, server: FakeProvider) -> None:
    server.plan(delay_s=10)
    task = asyncio.create_task(llm.generate_content_async(HELLO))
    await asyncio.to_thread(server.wait_for_requests, 1)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_factory_client_talks_to_the_server(server: FakeProvider) -> None:
    settings = Settings(
        _env_file=None, openai_base_url=f"{server.url}/v1", openai_api_key=KEY, llm_model="m1"
    )  # type: ignore[call-arg]
    async with LlmFactory(settings) as factory:
        response = await factory.create("openai").generate_content_async(HELLO)

    assert response.text == "echo: hello world"
    assert server.requests[0].body["model"] == "m1"
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_fake_provider_as_a_process_is_scriptable_over_http() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(FAKE_PROVIDER_SCRIPT), "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), timeout=10))
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as http:
            planned = await http.post("/_fake/plan", json={"status": 529, "headers": {"retry-after": "3"}})
            assert planned.status_code == 200
            llm = OpenAiLlm(http, "m", base_url=f"{base_url}/v1", api_key=KEY)

            with pytest.raises(TransientProviderError) as caught:
                await llm.generate_content_async(HELLO)
            response = await llm.generate_content_async(HELLO)
            recorded = (await http.get("/_fake/requests")).json()

        assert (caught.value.status_code, caught.value.retry_after_s) == (529, 3.0)
        assert response.text == "echo: hello world"
        assert [r["path"] for r in recorded] == [OPENAI_PATH, OPENAI_PATH]
        assert recorded[1]["body"]["messages"] == [{"role": "user", "content": "hello world"}]
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0


def test_repr_names_the_model_and_url_but_not_the_key(http: httpx.AsyncClient) -> None:
    llm = OpenAiLlm(http, "m", base_url="http://user:pw@gpu-box:8000/v1/", api_key=KEY)

    assert repr(llm) == "<OpenAiLlm model='m' base_url='http://gpu-box:8000/v1'>"


async def test_cached_prompt_tokens_are_reported_as_cache_reads(llm: OpenAiLlm, server: FakeProvider) -> None:
    server.plan(
        status=200,
        body={
            "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 120,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 100},
            },
        },
    )

    response = await llm.generate_content_async(HELLO)

    assert response.usage == TokenUsage(input_tokens=20, output_tokens=3, cache_read_tokens=100)


async def test_x_ratelimit_headers_are_parsed(llm: OpenAiLlm, server: FakeProvider) -> None:
    server.plan(
        status=200,
        headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30s"},
        body={
            "choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1},
        },
    )

    response = await llm.generate_content_async(HELLO)

    assert response.rate_limit is not None
    assert response.rate_limit.requests is not None
    assert response.rate_limit.requests.limit == 4000  # the fake's default, under the planned headers
    assert response.rate_limit.requests.remaining == 0
    assert response.rate_limit.exhausted_for_s() == 90.0
    assert response.usage.cache_read_tokens == 0
