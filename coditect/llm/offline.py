"""A deterministic provider that needs no network: the default when no API key is set."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from coditect.llm.base import BaseLlm, LlmRequest, LlmResponse, Message
from coditect.models import TokenUsage

__all__ = ["OfflineLlm"]

DEFAULT_OFFLINE_MODEL = "offline-1"


def _count_tokens(text: str) -> int:
    # Roughly what real tokenizers give for English: one token per four characters.
    return max(1, (len(text) + 3) // 4)


class OfflineLlm(BaseLlm):
    """Answers from a hash of the prompt after ``latency_s``: the same prompt always gets the same reply."""

    provider = "offline"

    def __init__(self, model: str = DEFAULT_OFFLINE_MODEL, *, latency_s: float = 0.0) -> None:
        super().__init__(model)
        self.latency_s = latency_s

    async def generate_content_async(
        self, messages: Sequence[Message], request: LlmRequest | None = None
    ) -> LlmResponse:
        request = request or LlmRequest()
        prompt = messages[-1].content if messages else ""
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        digest = hashlib.sha256(f"{request.system}\n{prompt}".encode()).hexdigest()[:12]
        first_line = prompt.strip().splitlines()[0][:80] if prompt.strip() else "(empty prompt)"
        text = f"[offline {self.model} #{digest}] {first_line}"
        input_tokens = _count_tokens(request.system) + sum(_count_tokens(m.content) for m in messages)
        output_tokens = min(_count_tokens(text), request.max_tokens)
        return LlmResponse(
            text=text,
            provider=self.provider,
            model=self.model,
            usage=TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens),
            stop_reason="end_turn",
        )
