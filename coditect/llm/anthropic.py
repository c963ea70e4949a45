"""The Anthropic Messages API through the official SDK (2.x, on httpx2).

Imported only when the anthropic provider is first used: ``import anthropic`` takes about a second.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import anthropic
from anthropic import Omit
from anthropic.types import MessageParam, TextBlockParam

from coditect.errors import ConfigurationError, PermanentProviderError
from coditect.llm.base import BaseLlm, LlmRequest, LlmResponse, Message, RateLimitInfo
from coditect.llm.http_errors import (
    connection_error,
    describe,
    malformed_response_error,
    redact,
    safe_url,
    status_error,
    timeout_error,
)
from coditect.models import TokenUsage
from coditect.settings import Settings

__all__ = ["DEFAULT_ANTHROPIC_MODEL", "AnthropicLlm", "create_anthropic_client"]

DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-5-5"


def create_anthropic_client(settings: Settings) -> anthropic.AsyncAnthropic:
    """One ``AsyncAnthropic`` per process, configured from ``settings``.

    SDK retries are off (``max_retries=0``): the queue is coditect's only retry layer, and it honours
    ``retry-after`` across workers instead of sleeping inside a job. The explicit timeout bounds every
    request and also skips the SDK's "streaming is required" estimate for large ``max_tokens``.
    """
    key = settings.anthropic_api_key
    if key is None or not key.get_secret_value():
        raise ConfigurationError(
            "the anthropic provider needs an API key: set ANTHROPIC_API_KEY "
            "(or choose another provider with CODITECT_LLM_PROVIDER)"
        )
    return anthropic.AsyncAnthropic(
        api_key=key.get_secret_value(),
        base_url=settings.anthropic_base_url or None,
        max_retries=0,
        timeout=settings.llm_timeout_s,
    )


def _system_param(system: str) -> list[TextBlockParam] | Omit:
    """A non-empty system prompt as one cacheable block: calls that share it read it from the cache.

    The prompt cache holds a prefix for five minutes after its last use; prompts shorter than the
    model's minimum cacheable length are simply not cached (no error).
    """
    if not system:
        return anthropic.omit
    return [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]


def _message_param(message: Message) -> MessageParam:
    if message.role == "user":
        return {"role": "user", "content": message.content}
    return {"role": "assistant", "content": message.content}


class AnthropicLlm(BaseLlm):
    """Claude models over the Messages API. The client is shared; see ``create_anthropic_client``."""

    provider = "anthropic"

    def __init__(self, client: anthropic.AsyncAnthropic, model: str) -> None:
        super().__init__(model)
        self.client = client

    async def generate_content_async(
        self, messages: Sequence[Message], request: LlmRequest | None = None
    ) -> LlmResponse:
        request = request or LlmRequest()
        base_url = safe_url(str(self.client.base_url))
        try:
            # The raw response keeps the headers: the rate-limit state rides on every answer.
            raw = await self.client.messages.with_raw_response.create(
                model=self.model,
                max_tokens=request.max_tokens,
                system=_system_param(request.system),
                messages=[_message_param(message) for message in messages],
            )
            reply = await raw.parse()
        # Exception subclasses only: cancellation (BaseException) passes through untouched.
        except anthropic.APITimeoutError as err:
            raise timeout_error(self.provider, base_url, err.__cause__, self.client.timeout) from err
        except anthropic.APIConnectionError as err:
            raise connection_error(self.provider, base_url, err.__cause__) from err
        except anthropic.APIStatusError as err:
            raise status_error(
                self.provider, err.status_code, err.body, err.response.headers, secret=self.client.api_key
            ) from err
        except (anthropic.APIResponseValidationError, json.JSONDecodeError) as err:
            # A 2xx body the SDK cannot use; it lets JSONDecodeError out untranslated.
            raise malformed_response_error(self.provider, base_url, err, secret=self.client.api_key) from err
        except anthropic.AnthropicError as err:
            detail = redact(describe(err), self.client.api_key)
            raise PermanentProviderError(self.provider, f"request to {base_url} failed: {detail}") from err
        try:
            text = "".join(block.text for block in reply.content if block.type == "text")
            usage = TokenUsage(
                input_tokens=reply.usage.input_tokens,
                output_tokens=reply.usage.output_tokens,
                # Absent or null when the request used no prompt cache.
                cache_read_tokens=reply.usage.cache_read_input_tokens or 0,
                cache_write_tokens=reply.usage.cache_creation_input_tokens or 0,
            )
        except (AttributeError, TypeError, ValueError) as err:
            # Without strict validation the SDK builds models from whatever JSON it got.
            raise malformed_response_error(self.provider, base_url, err) from err
        return LlmResponse(
            text=text,
            provider=self.provider,
            model=reply.model or self.model,
            usage=usage,
            stop_reason=reply.stop_reason,
            rate_limit=RateLimitInfo.from_headers(raw.headers),
        )
