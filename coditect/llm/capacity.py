"""The one seam around every LLM request: wait for shared capacity, call, correct the shared counters.

The engine calls ``call_with_capacity`` instead of ``BaseLlm.generate_content_async``::

    response = await call_with_capacity(llm, messages, request, limiter=limiter, idle=worker_idle)

- capacity free now: the call goes out at once;
- capacity free within the horizon: the task waits that long, inside ``idle()`` (the engine's context
  manager under which it holds no worker slot) but for the last ``RateLimiter.lead_s``, when it holds
  its slot again, then calls without asking again, unless a 429 paused the model meanwhile: then its
  time is given back and it asks again; or unless it got its slot back too late to call within
  ``RateLimiter.late_s`` of its time: then it asks for a new time, once;
- capacity further away: ``CapacityDeferred(delay_s)`` is raised before anything is sent; the engine
  puts the task back in the queue for ``delay_s`` without counting an attempt;
- after the call the token charges are corrected by the usage (``RateLimiter.settle``), and rate-limit
  headers saying an allowance is spent pause the model for every worker; a 429 or 529 with
  retry-after does the same, then the error is raised as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from redis.exceptions import RedisError

from coditect.errors import CapacityDeferred, TransientProviderError
from coditect.llm.base import BaseLlm, LlmRequest, LlmResponse, Message
from coditect.llm.limits import RateLimiter

__all__ = ["RATE_LIMIT_STATUSES", "call_with_capacity"]

logger = logging.getLogger(__name__)

RATE_LIMIT_STATUSES = frozenset({429, 529})


async def call_with_capacity(
    llm: BaseLlm,
    messages: Sequence[Message],
    request: LlmRequest,
    *,
    limiter: RateLimiter | None,
    idle: Callable[[], AbstractAsyncContextManager[None]],
    on_wait: Callable[[float], None] | None = None,
) -> LlmResponse:
    """``llm.generate_content_async(messages, request)`` within the shared rate limits.

    Raises ``CapacityDeferred`` when capacity is further away than the horizon (nothing was sent), and
    whatever the provider raises. ``on_wait(seconds)`` is told every time the task waited for capacity.
    """
    provider, model = llm.provider, llm.model
    if limiter is None or not limiter.applies_to(provider, model):
        return await llm.generate_content_async(messages, request)
    estimate = limiter.estimate_input_tokens(provider, model, request.system, messages)
    asked_again = False
    while True:
        reservation = await limiter.reserve(provider, model, estimate, request.max_tokens)
        if not reservation.granted:
            raise CapacityDeferred(reservation.wait_s, provider=provider, model=model)
        if reservation.wait_s <= 0:
            break
        started = time.monotonic()
        late_s = await _wait_for(started + reservation.wait_s, limiter.lead_s, idle)
        if on_wait is not None:
            on_wait(time.monotonic() - started)
        if await limiter.cooldown_left(provider, model) > 0:
            # A 429 paused the model while this task slept; its time has passed unused. Asking again
            # spaces the calls after the pause, instead of all of them going out the moment it ends.
            await limiter.release(reservation)
            continue
        if late_s <= limiter.late_s or asked_again:
            break
        # Sent now, the call would bunch with the calls reserved after its time, which the provider
        # counts in the same short window. Once only, so that a task always gets to call.
        logger.info(
            "rate limit: %s/%s call %.3f s past its time: asking for a new one",
            provider, model, late_s,
        )  # fmt: skip
        asked_again = True
        await limiter.release(reservation)
    try:
        response = await llm.generate_content_async(messages, request)
    except TransientProviderError as err:
        await _after_transient_error(limiter, provider, model, err)
        raise
    limiter.note_prompt_cache(provider, model, request.system, response.usage)
    try:
        await limiter.settle(reservation, response.usage)
        await limiter.observe(provider, model, response.rate_limit)
    except RedisError as err:
        # The answer is paid for: a bookkeeping failure must not throw it away.
        logger.warning("rate limit: could not record %s/%s usage: %s", provider, model, err)
    return response


async def _wait_for(
    due: float, lead_s: float, idle: Callable[[], AbstractAsyncContextManager[None]]
) -> float:
    """Sleep until ``due`` (monotonic), holding no worker slot but for the last ``lead_s``; return how
    late the task is once it holds its slot again (0 when on time).

    With every slot busy, taking one back waits for a job to end; taking it back ``lead_s`` early lets
    the call go out at its time all the same.
    """
    if due - time.monotonic() > lead_s:
        async with idle():
            await asyncio.sleep(due - lead_s - time.monotonic())
    await asyncio.sleep(max(0.0, due - time.monotonic()))
    return max(0.0, time.monotonic() - due)


async def _after_transient_error(
    limiter: RateLimiter, provider: str, model: str, err: TransientProviderError
) -> None:
    try:
        if err.status_code in RATE_LIMIT_STATUSES and err.retry_after_s:
            await limiter.cool_down(provider, model, err.retry_after_s)
        await limiter.observe(provider, model, err.rate_limit)
    except RedisError as redis_err:
        logger.warning("rate limit: could not pause %s/%s: %s", provider, model, redis_err)
