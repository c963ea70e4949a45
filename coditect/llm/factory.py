"""LlmFactory: providers by name, one HTTP client (one connection pool) per provider per process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from coditect.errors import ConfigurationError
from coditect.llm.base import BaseLlm
from coditect.llm.offline import DEFAULT_OFFLINE_MODEL, OfflineLlm
from coditect.settings import Settings

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

__all__ = ["LlmFactory"]

PROVIDERS = ("offline", "anthropic", "openai")


class LlmFactory:
    """Makes ``BaseLlm`` instances that share this factory's clients.

    Create one per process (a worker creates it at start-up) and ``await aclose()`` it at shutdown,
    or use it as an async context manager. SDKs are imported only when their provider is first used.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._http: httpx.AsyncClient | None = None
        self._anthropic: AsyncAnthropic | None = None
        self._closed = False
        self._made: dict[tuple[str | None, str | None], BaseLlm] = {}  # every task asks again

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The shared httpx client (OpenAI-compatible providers and agent endpoints)."""
        self._check_open()
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(
                    self.settings.llm_timeout_s, connect=min(10.0, self.settings.llm_timeout_s)
                ),
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
            )
        return self._http

    def _anthropic_client(self) -> AsyncAnthropic:
        self._check_open()
        if self._anthropic is None:
            from coditect.llm.anthropic import create_anthropic_client

            self._anthropic = create_anthropic_client(self.settings)
        return self._anthropic

    def create(self, provider: str | None = None, model: str | None = None) -> BaseLlm:
        """A provider bound to ``model`` (default: ``CODITECT_LLM_MODEL``, then the provider's own).

        The same arguments give the same instance again (an instance only names its model and
        shares this factory's client)."""
        self._check_open()
        made = self._made.get((provider, model))
        if made is None:
            made = self._made[(provider, model)] = self._create(provider, model)
        return made

    def _create(self, provider: str | None, model: str | None) -> BaseLlm:
        name = provider or self.settings.provider
        model = model or self.settings.llm_model or None
        if name == "offline":
            return OfflineLlm(model or DEFAULT_OFFLINE_MODEL, latency_s=self.settings.offline_latency_s)
        if name == "anthropic":
            from coditect.llm.anthropic import DEFAULT_ANTHROPIC_MODEL, AnthropicLlm

            return AnthropicLlm(self._anthropic_client(), model or DEFAULT_ANTHROPIC_MODEL)
        if name == "openai":
            from coditect.llm.openai import DEFAULT_OPENAI_MODEL, OpenAiLlm

            key = self.settings.openai_api_key
            return OpenAiLlm(
                self.http_client,
                model or DEFAULT_OPENAI_MODEL,
                base_url=self.settings.openai_base_url,
                api_key=key.get_secret_value() if key is not None else None,
            )
        raise ConfigurationError(f"unknown LLM provider {name!r}; choose one of {', '.join(PROVIDERS)}")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this LlmFactory is closed; create a new one")

    async def aclose(self) -> None:
        """Close the clients this factory opened. It cannot be used afterwards."""
        self._closed = True
        http, self._http = self._http, None
        anthropic, self._anthropic = self._anthropic, None
        if http is not None:
            await http.aclose()
        if anthropic is not None:
            await anthropic.close()

    async def __aenter__(self) -> LlmFactory:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<LlmFactory default={self.settings.provider!r}>"
