"""OpenAI-compatible chat completions over plain httpx (vLLM, llama.cpp ``llama-server``, Ollama, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from coditect.errors import PermanentProviderError
from coditect.llm.base import BaseLlm, LlmRequest, LlmResponse, Message, RateLimitInfo
from coditect.llm.http_errors import (
    connection_error,
    malformed_response_error,
    safe_url,
    status_error,
    timeout_error,
)
from coditect.models import TokenUsage

__all__ = ["DEFAULT_OPENAI_MODEL", "OpenAiLlm"]

# vLLM and llama.cpp serve whatever model they loaded; most ignore the name or accept any.
DEFAULT_OPENAI_MODEL = "default"


def _json_or_text(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return response.text


class OpenAiLlm(BaseLlm):
    """A model behind ``POST {base_url}/chat/completions``; the shared httpx client owns the timeouts."""

    provider = "openai"

    def __init__(self, client: httpx.AsyncClient, model: str, *, base_url: str, api_key: str | None) -> None:
        super().__init__(model)
        self.client = client
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} model={self.model!r} base_url={safe_url(self.base_url)!r}>"

    async def generate_content_async(
        self, messages: Sequence[Message], request: LlmRequest | None = None
    ) -> LlmResponse:
        request = request or LlmRequest()
        url = f"{self.base_url}/chat/completions"
        chat: list[dict[str, str]] = [{"role": "system", "content": request.system}] if request.system else []
        chat += [{"role": message.role, "content": message.content} for message in messages]
        payload = {"model": self.model, "messages": chat, "max_tokens": request.max_tokens, "stream": False}
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            response = await self.client.post(url, json=payload, headers=headers)
        # Exception subclasses only: cancellation (BaseException) passes through untouched.
        except httpx.TimeoutException as err:
            raise timeout_error(self.provider, self.base_url, err, self.client.timeout) from err
        except httpx.UnsupportedProtocol as err:
            raise PermanentProviderError(
                self.provider, f"unsupported base URL {safe_url(self.base_url)!r}: {err}"
            ) from err
        except httpx.TransportError as err:
            raise connection_error(self.provider, self.base_url, err) from err
        if not response.is_success:
            raise status_error(
                self.provider,
                response.status_code,
                _json_or_text(response),
                response.headers,
                secret=self._api_key,
            )
        return self._parse(response, url)

    def _parse(self, response: httpx.Response, url: str) -> LlmResponse:
        try:
            data: Any = response.json()
            choice = data["choices"][0]
            content = choice["message"]["content"]
            usage = data.get("usage") or {}
            # vLLM and OpenAI report prefix-cache hits inside the prompt count; split them out.
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            prompt_tokens = usage.get("prompt_tokens") or 0
            model, finish_reason = data.get("model"), choice.get("finish_reason")
            return LlmResponse(
                # content is null when the model only called tools
                text=content if isinstance(content, str) else "",
                provider=self.provider,
                model=model if isinstance(model, str) and model else self.model,
                usage=TokenUsage(
                    input_tokens=prompt_tokens - cached,
                    output_tokens=usage.get("completion_tokens") or 0,
                    cache_read_tokens=cached,
                ),
                stop_reason=finish_reason if isinstance(finish_reason, str) else None,
                rate_limit=RateLimitInfo.from_headers(response.headers),
            )
        except (ValueError, LookupError, TypeError, AttributeError) as err:
            # ValueError covers invalid JSON and TokenUsage's pydantic ValidationError.
            raise malformed_response_error(
                self.provider,
                url,
                err,
                status_code=response.status_code,
                body=response.text,
                secret=self._api_key,
            ) from err
