"""Rate limits shared by every worker process through Redis, per provider and model.

``CODITECT_LIMITS_FILE`` (JSON, or TOML by suffix) sets requests, input tokens and output tokens per
minute for a provider (every model of it) and for single models::

    {"limits": [{"provider": "anthropic", "requests_per_minute": 1000},
                {"provider": "anthropic", "model": "claude-sonnet-4-5", "requests_per_minute": 50,
                 "input_tokens_per_minute": 30000, "output_tokens_per_minute": 8000}]}

A call is charged on every limit that applies: its provider's and its model's (a dated snapshot such as
``claude-sonnet-4-5-20250929`` counts as its model). ``RateLimiter`` enforces them with GCRA in one Lua
script call (``coditect/lua/ratelimit.lua``): each limit and dimension keeps the theoretical arrival
time of its next unit, a unit costs ``60 / limit`` seconds (a call costs 1 request, its estimated input
tokens and its ``max_tokens`` of output), and a call may start only once every theoretical arrival
time it is charged on has passed. So calls are spread evenly, with no burst beyond one call: providers
enforce their per-minute limits over short intervals, and a minute's allowance sent at once gets 429s.
Times are Redis's own clock (``TIME``), so worker clocks do not matter.

A call whose capacity frees within the horizon (``CODITECT_RATE_LIMIT_HORIZON_S``) is charged at that
time at once and sleeps until then; a longer wait reserves nothing, and the task should stay away
until the capacity frees (``Reservation.wait_s``) before it asks again.

After the call, ``settle`` corrects the token charges by the usage that came back. A correction gives
capacity back only down to the end of the latest call's own charge, so consecutive calls always stay
their charged cost apart: tokens sent in any interval stay within the limit for that interval plus
one call, which a provider's token bucket absorbs. The estimate leaves out a system prompt this
process saw in the provider's prompt cache (cache reads do not count toward input-token limits).
A 429 or 529 with retry-after pauses the provider and model for every worker (``cool_down``), and so
does a rate-limit header saying an allowance is spent (``observe``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from redis.asyncio import Redis

from coditect.config_files import load_config_file
from coditect.errors import ConfigurationError
from coditect.keys import cooldown_key, limit_key
from coditect.llm.base import Message, RateLimitInfo, snapshot_of
from coditect.lua import script
from coditect.models import ProviderName, TokenUsage
from coditect.settings import Settings

__all__ = [
    "RateLimit",
    "RateLimiter",
    "Reservation",
    "estimate_input_tokens",
    "load_limits_file",
]

logger = logging.getLogger(__name__)

Dimension = Literal["requests", "input_tokens", "output_tokens"]
DIMENSIONS: tuple[Dimension, ...] = ("requests", "input_tokens", "output_tokens")
CHARS_PER_TOKEN = 4
# Roles and separators: real tokenizers count a few tokens per message beyond its text.
MESSAGE_OVERHEAD_TOKENS = 4
_US_PER_MINUTE = 60_000_000
# Anthropic keeps a cached prompt prefix five minutes after its last use.
PROMPT_CACHE_LIFETIME_S = 300.0
# Past this many, prompts whose cache lifetime ended are forgotten.
MAX_REMEMBERED_PROMPTS = 1000
# A task waiting for capacity takes its worker slot back this long before its time (``call_with_capacity``):
# with every slot busy, that waits for a job to end, about a call's duration.
SLOT_LEAD_S = 0.1
# A call that would go out later than this after its time asks for a new time instead (once): a late
# call bunches with the ones reserved after it, in the provider's short windows.
LATE_TOLERANCE_S = 0.02


def estimate_input_tokens(system: str, messages: Sequence[Message]) -> int:
    """The input tokens of a call before it is made: at least 1.

    About four characters per token, rounded up, for the system prompt and each message, plus
    ``MESSAGE_OVERHEAD_TOKENS`` per message. Only an estimate: ``RateLimiter.settle`` corrects the
    charge by the usage the provider reports.
    """
    texts = [system, *(message.content for message in messages)]
    chars = sum(math.ceil(len(text) / CHARS_PER_TOKEN) for text in texts if text)
    return max(1, chars + MESSAGE_OVERHEAD_TOKENS * len(messages))


class LimitEntry(BaseModel):
    """One entry of the limits file."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    provider: ProviderName
    model: str | None = Field(default=None, min_length=1, max_length=200)
    requests_per_minute: PositiveInt | None = None
    input_tokens_per_minute: PositiveInt | None = None
    output_tokens_per_minute: PositiveInt | None = None

    @model_validator(mode="after")
    def _sets_a_limit(self) -> LimitEntry:
        if (self.requests_per_minute, self.input_tokens_per_minute, self.output_tokens_per_minute) == (
            None,
            None,
            None,
        ):
            raise ValueError(
                "set at least one of requests_per_minute, input_tokens_per_minute, output_tokens_per_minute"
            )
        return self


class LimitsFile(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    limits: list[LimitEntry]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Per-minute limits of a provider (``model=None``: all its models together) or of one model."""

    provider: str
    model: str | None = None
    requests_per_minute: int | None = None
    input_tokens_per_minute: int | None = None
    output_tokens_per_minute: int | None = None

    def per_minute(self, dimension: Dimension) -> int | None:
        value: int | None = getattr(self, f"{dimension}_per_minute")
        return value


def load_limits_file(path: Path) -> tuple[RateLimit, ...]:
    """The limits in ``path``; a bad file raises ``ConfigurationError`` naming the file and the field."""
    parsed = load_config_file(path, LimitsFile)
    seen: dict[tuple[str, str | None], int] = {}
    limits = []
    for index, entry in enumerate(parsed.limits):
        scope = (entry.provider, entry.model)
        if scope in seen:
            what = f"{entry.provider} {entry.model}" if entry.model else f"{entry.provider} (provider-wide)"
            raise ConfigurationError(f"{path}: limits[{index}]: repeats limits[{seen[scope]}] for {what}")
        seen[scope] = index
        limits.append(RateLimit(**entry.model_dump()))
    return tuple(limits)


@dataclass(frozen=True, slots=True)
class _Charge:
    """One limit and dimension a call is charged on."""

    key: str
    dimension: Dimension
    per_minute: int

    def cost_us(self, units: int) -> int:
        # Rounded up, so that a charge never undercounts.
        return -(-units * _US_PER_MINUTE // self.per_minute)


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer of ``RateLimiter.reserve``.

    ``granted``: capacity is charged at ``wait_s`` from now; sleep that long, then call the provider
    without asking again (or, unable to call at that time, ``release`` it and ask again). Not granted:
    nothing is charged; capacity frees in ``wait_s``, and the task should stay away that long before
    it asks again (coming back sooner would find the capacity until then taken, and ask again and
    again).
    ``limited`` is False when no limit applies (nothing was asked of Redis).
    """

    provider: str
    model: str
    granted: bool
    wait_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    start_us: int | None = None  # the reserved start on the Redis server's clock
    limited: bool = True


class RateLimiter:
    """Rate limits and cooldowns shared through Redis by every worker. Create one per process.

    A provider and model that no limit applies to cost no Redis round trip; cooldowns, too, are kept
    only for those (give a provider a limit to have 429s pause all its models' callers).
    """

    def __init__(
        self,
        redis: Redis,
        limits: Iterable[RateLimit] = (),
        *,
        horizon_s: float = 5.0,
        lead_s: float = SLOT_LEAD_S,
        late_s: float = LATE_TOLERANCE_S,
    ) -> None:
        self.redis = redis
        self.limits = tuple(limits)
        self.horizon_s = horizon_s
        self.lead_s = lead_s
        self.late_s = late_s
        self._script = redis.register_script(script("ratelimit"))
        self._charges: dict[tuple[str, str], tuple[_Charge, ...]] = {}
        self._cached_prompts: dict[tuple[str, str, str], float] = {}

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> RateLimiter:
        """The limits of ``CODITECT_LIMITS_FILE`` (none without one) and the configured horizon."""
        limits = load_limits_file(settings.limits_file) if settings.limits_file is not None else ()
        return cls(redis, limits, horizon_s=settings.rate_limit_horizon_s)

    def _charges_for(self, provider: str, model: str) -> tuple[_Charge, ...]:
        """Every limit and dimension a call to ``provider``/``model`` is charged on."""
        cached = self._charges.get((provider, model))
        if cached is not None:
            return cached
        names = {model, snapshot_of(model)}
        found = tuple(
            _Charge(limit_key(dimension, provider, limit.model), dimension, per_minute)
            for limit in self.limits
            if limit.provider == provider and (limit.model is None or limit.model in names)
            for dimension in DIMENSIONS
            if (per_minute := limit.per_minute(dimension)) is not None
        )
        self._charges[(provider, model)] = found
        return found

    def applies_to(self, provider: str, model: str) -> bool:
        # Without a limits file every call asks this: answered before any lookup.
        return bool(self.limits) and bool(self._charges_for(provider, model))

    def estimate_input_tokens(
        self, provider: str, model: str, system: str, messages: Sequence[Message]
    ) -> int:
        """``estimate_input_tokens``, leaving out a system prompt this process saw read from the
        provider's prompt cache within its lifetime: cache reads do not count toward input-token
        limits, and charging them would hold calls back for capacity they do not use."""
        cached = self._cached_prompts.get((provider, model, _digest(system)), 0.0) > time.monotonic()
        return estimate_input_tokens("" if cached else system, messages)

    def note_prompt_cache(self, provider: str, model: str, system: str, usage: TokenUsage) -> None:
        """Remember that ``system`` is in the provider's prompt cache when ``usage`` read or wrote it."""
        if not (system and (usage.cache_read_tokens or usage.cache_write_tokens)):
            return
        now = time.monotonic()
        if len(self._cached_prompts) >= MAX_REMEMBERED_PROMPTS:
            self._cached_prompts = {key: until for key, until in self._cached_prompts.items() if until > now}
        self._cached_prompts[(provider, model, _digest(system))] = now + PROMPT_CACHE_LIFETIME_S

    async def reserve(self, provider: str, model: str, input_tokens: int, output_tokens: int) -> Reservation:
        """Charge a call of ``input_tokens`` (estimated) and ``output_tokens`` (its max_tokens) if its
        capacity frees within the horizon; see ``Reservation``."""
        charges = self._charges_for(provider, model)
        if not charges:
            return Reservation(provider, model, granted=True, limited=False)
        units = {"requests": 1, "input_tokens": input_tokens, "output_tokens": output_tokens}
        horizon_us = round(self.horizon_s * 1_000_000)
        granted, wait_us, start_us = await self._run(
            [cooldown_key(provider, model), *(charge.key for charge in charges)],
            ["reserve", horizon_us, *(charge.cost_us(units[charge.dimension]) for charge in charges)],
        )
        wait_s = int(wait_us) / 1_000_000
        return Reservation(
            provider,
            model,
            granted=bool(granted),
            wait_s=wait_s,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            start_us=int(start_us),
        )

    async def settle(self, reservation: Reservation, usage: TokenUsage) -> None:
        """Correct the token charges of a call that was made by what it actually used.

        Input counts ``input_tokens + cache_write_tokens``: cache reads do not count toward Anthropic's
        input-token limits (for current models, per its rate-limit docs). Output counts
        ``output_tokens``. A call that used less than reserved gives the difference back.
        """
        if not (reservation.limited and reservation.granted):
            return
        actual = {
            "input_tokens": usage.input_tokens + usage.cache_write_tokens,
            "output_tokens": usage.output_tokens,
        }
        reserved = {"input_tokens": reservation.input_tokens, "output_tokens": reservation.output_tokens}
        corrections = [
            (
                charge.key,
                charge.cost_us(actual[charge.dimension]) - charge.cost_us(reserved[charge.dimension]),
            )
            for charge in self._charges_for(reservation.provider, reservation.model)
            if charge.dimension != "requests"
        ]
        corrections = [(key, delta) for key, delta in corrections if delta]
        if corrections:
            await self._settle(reservation, corrections)

    async def release(self, reservation: Reservation) -> None:
        """Give back everything a granted reservation charged: its call will not be made at that time."""
        if not (reservation.limited and reservation.granted):
            return
        units = {
            "requests": 1,
            "input_tokens": reservation.input_tokens,
            "output_tokens": reservation.output_tokens,
        }
        charges = self._charges_for(reservation.provider, reservation.model)
        refunds = [(charge.key, -charge.cost_us(units[charge.dimension])) for charge in charges]
        refunds = [(key, delta) for key, delta in refunds if delta]
        if refunds:
            await self._settle(reservation, refunds)

    async def cool_down(self, provider: str, model: str, seconds: float) -> None:
        """Pause ``provider``/``model`` for every worker for ``seconds``; a longer pause already set wins."""
        if seconds <= 0 or not math.isfinite(seconds) or not self.applies_to(provider, model):
            return
        await self._run([cooldown_key(provider, model)], ["cool", math.ceil(seconds * 1_000_000)])
        logger.info("rate limit: %s/%s paused for every worker for %.3f s", provider, model, seconds)

    async def cooldown_left(self, provider: str, model: str) -> float:
        """Seconds until the pause of ``provider``/``model`` ends; 0 when it is not paused."""
        if not self.applies_to(provider, model):
            return 0.0
        left_us = await self._run([cooldown_key(provider, model)], ["cooling"])
        return int(left_us) / 1_000_000

    async def observe(self, provider: str, model: str, info: RateLimitInfo | None) -> None:
        """Pause ``provider``/``model`` until its reset when the provider says an allowance is spent."""
        seconds = info.exhausted_for_s() if info is not None else None
        if seconds:
            await self.cool_down(provider, model, seconds)

    async def _settle(self, reservation: Reservation, corrections: list[tuple[str, int]]) -> None:
        keys, deltas = [key for key, _ in corrections], [delta for _, delta in corrections]
        await self._run(keys, ["settle", reservation.start_us or 0, *deltas])

    async def _run(self, keys: list[str], args: list[Any]) -> Any:
        return await self._script(keys=keys, args=args)

    def __repr__(self) -> str:
        return f"<RateLimiter limits={len(self.limits)} horizon_s={self.horizon_s:g}>"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
