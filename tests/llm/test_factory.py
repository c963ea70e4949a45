"""LlmFactory: providers by name, the default-provider rule, shared clients and their lifetime."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import httpx
import pytest

from coditect.errors import ConfigurationError
from coditect.llm.anthropic import DEFAULT_ANTHROPIC_MODEL, AnthropicLlm
from coditect.llm.factory import LlmFactory
from coditect.llm.offline import DEFAULT_OFFLINE_MODEL, OfflineLlm
from coditect.llm.openai import DEFAULT_OPENAI_MODEL, OpenAiLlm
from coditect.settings import Settings

KEY = "sk-test-factory-3c7e19d4"


def make_settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_default_provider_is_offline_without_a_key() -> None:
    assert make_settings().provider == "offline"


def test_default_provider_is_anthropic_when_its_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)

    settings = make_settings()

    assert settings.provider == "anthropic"
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == KEY


def test_an_explicit_provider_beats_the_key_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("CODITECT_LLM_PROVIDER", "openai")

    assert make_settings().provider == "openai"


async def test_create_without_a_name_uses_the_default_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    async with LlmFactory(make_settings()) as factory:
        assert isinstance(factory.create(), OfflineLlm)

    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    async with LlmFactory(make_settings()) as factory:
        llm = factory.create()
        assert isinstance(llm, AnthropicLlm)
        assert llm.client.api_key == KEY


async def test_each_provider_by_name_with_its_default_model() -> None:
    async with LlmFactory(make_settings(anthropic_api_key=KEY, offline_latency_s=0.25)) as factory:
        offline, claude, local = (
            factory.create("offline"),
            factory.create("anthropic"),
            factory.create("openai"),
        )

    assert isinstance(offline, OfflineLlm)
    assert (offline.model, offline.latency_s) == (DEFAULT_OFFLINE_MODEL, 0.25)
    assert isinstance(claude, AnthropicLlm)
    assert claude.model == DEFAULT_ANTHROPIC_MODEL
    assert isinstance(local, OpenAiLlm)
    assert local.model == DEFAULT_OPENAI_MODEL
    assert local.base_url == "http://localhost:8000/v1"


async def test_the_same_provider_and_model_give_the_same_instance_again() -> None:
    async with LlmFactory(make_settings()) as factory:
        first = factory.create("offline", "m1")

        assert factory.create("offline", "m1") is first
        assert factory.create("offline", "m2") is not first
        assert factory.create("offline", "m2").model == "m2"


async def test_model_setting_and_argument_override_the_default() -> None:
    async with LlmFactory(make_settings(llm_model="from-settings")) as factory:
        assert factory.create("openai").model == "from-settings"
        assert factory.create("offline", model="from-argument").model == "from-argument"


async def test_anthropic_without_a_key_is_a_configuration_error() -> None:
    async with LlmFactory(make_settings()) as factory:
        with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
            factory.create("anthropic")


async def test_unknown_provider_is_a_configuration_error() -> None:
    async with LlmFactory(make_settings()) as factory:
        with pytest.raises(
            ConfigurationError,
            match=r"unknown LLM provider 'gemini'; choose one of offline, anthropic, openai",
        ):
            factory.create("gemini")


async def test_one_shared_client_per_provider() -> None:
    async with LlmFactory(make_settings(anthropic_api_key=KEY)) as factory:
        first, second = factory.create("anthropic"), factory.create("anthropic", model="claude-other")
        assert isinstance(first, AnthropicLlm)
        assert isinstance(second, AnthropicLlm)
        assert first.client is second.client
        assert first.client.max_retries == 0

        local_a, local_b = factory.create("openai"), factory.create("openai")
        assert isinstance(local_a, OpenAiLlm)
        assert isinstance(local_b, OpenAiLlm)
        assert local_a.client is local_b.client is factory.http_client


async def test_aclose_closes_the_clients_and_the_factory_refuses_use() -> None:
    factory = LlmFactory(make_settings(anthropic_api_key=KEY))
    claude, local = factory.create("anthropic"), factory.create("openai")
    assert isinstance(claude, AnthropicLlm)
    assert isinstance(local, OpenAiLlm)
    assert not claude.client.is_closed()
    assert not local.client.is_closed

    await factory.aclose()

    assert claude.client.is_closed()
    assert local.client.is_closed
    for provider in ("anthropic", "openai"):
        with pytest.raises(RuntimeError, match="closed"):
            factory.create(provider)
    with pytest.raises(RuntimeError, match="closed"):
        _ = factory.http_client
    with pytest.raises(RuntimeError, match="closed"):
        await factory.__aenter__()
    await factory.aclose()  # a second close is harmless


async def test_async_with_closes_on_exit() -> None:
    async with LlmFactory(make_settings()) as factory:
        http = factory.http_client
        assert isinstance(http, httpx.AsyncClient)
        assert not http.is_closed

    assert http.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        factory.create("openai")


def test_importing_coditect_does_not_import_anthropic() -> None:
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        import coditect, coditect.llm
        from coditect.llm import LlmFactory
        from coditect.settings import Settings

        factory = LlmFactory(Settings(_env_file=None, anthropic_api_key={KEY!r}))
        factory.create("offline")
        factory.create("openai")
        assert "anthropic" not in sys.modules, "anthropic was imported before it was needed"
        factory.create("anthropic")
        assert "anthropic" in sys.modules, "the check above cannot see the import"
        asyncio.run(factory.aclose())
        """
    )

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
