"""OfflineLlm: deterministic replies, token counts, latency and the max_tokens cap, with no network."""

from __future__ import annotations

import asyncio
import time

from coditect.llm.base import LlmRequest, Message
from coditect.llm.offline import DEFAULT_OFFLINE_MODEL, OfflineLlm

PROMPT = [Message("user", "Write the release notes\nfor version 2")]


async def test_same_prompt_same_reply() -> None:
    first = await OfflineLlm().generate_content_async(PROMPT, LlmRequest(system="terse"))
    second = await OfflineLlm().generate_content_async(PROMPT, LlmRequest(system="terse"))

    assert first == second
    assert first.text.startswith(f"[offline {DEFAULT_OFFLINE_MODEL} #")
    assert first.text.endswith("] Write the release notes")  # the first line of the prompt
    assert (first.provider, first.model, first.stop_reason) == ("offline", DEFAULT_OFFLINE_MODEL, "end_turn")


async def test_prompt_system_and_model_change_the_reply() -> None:
    llm = OfflineLlm()
    base = await llm.generate_content_async(PROMPT)
    other_prompt = await llm.generate_content_async(
        [Message("user", "Write the release notes\nfor version 3")]
    )
    other_system = await llm.generate_content_async(PROMPT, LlmRequest(system="verbose"))
    other_model = await OfflineLlm("offline-2").generate_content_async(PROMPT)

    assert len({base.text, other_prompt.text, other_system.text}) == 3
    assert other_model.text.startswith("[offline offline-2 #")
    assert other_model.model == "offline-2"


async def test_token_counts_follow_the_text() -> None:
    messages = [Message("user", "a" * 40), Message("assistant", "b" * 8), Message("user", "c" * 9)]

    response = await OfflineLlm().generate_content_async(messages, LlmRequest(system="s" * 12))

    # One token per four characters, rounded up: 3 (system) + 10 + 2 + 3.
    assert response.usage.input_tokens == 18
    assert response.usage.output_tokens == (len(response.text) + 3) // 4
    assert response.usage.total_tokens == 18 + response.usage.output_tokens


async def test_max_tokens_caps_output_tokens() -> None:
    uncapped = await OfflineLlm().generate_content_async(PROMPT)
    capped = await OfflineLlm().generate_content_async(PROMPT, LlmRequest(max_tokens=2))

    assert uncapped.usage.output_tokens > 2
    assert capped.usage.output_tokens == 2


async def test_empty_conversation_still_answers() -> None:
    response = await OfflineLlm().generate_content_async([])

    assert response.text.endswith("] (empty prompt)")
    assert response.usage.input_tokens == 1


async def test_latency_is_honoured() -> None:
    started = time.monotonic()
    await OfflineLlm(latency_s=0.05).generate_content_async(PROMPT)

    assert time.monotonic() - started >= 0.05


async def test_calls_with_latency_run_concurrently() -> None:
    llm = OfflineLlm(latency_s=0.2)
    started = time.monotonic()

    replies = await asyncio.gather(
        *(llm.generate_content_async([Message("user", str(i))]) for i in range(20))
    )

    assert len({r.text for r in replies}) == 20
    assert time.monotonic() - started < 1.0  # 20 sequential calls would take 4 s
