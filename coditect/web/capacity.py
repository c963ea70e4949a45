"""Rate-limit use: the calls of the last minute against the limits of ``CODITECT_LIMITS_FILE``.

A task's final event names its agent and model (not its provider): a model named by a model's limit
belongs to that limit's provider; otherwise the agent's provider, or the default one, is taken.
Requests are counted per task that called a model, which is one call per task unless an agent calls
its model several times (a python agent may); tokens are what the tasks reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coditect.agents import AgentRegistry
from coditect.llm.base import snapshot_of
from coditect.llm.limits import RateLimit
from coditect.web.activity import Call

__all__ = ["LimitUse", "ProviderOf", "limit_use", "provider_resolver"]

ProviderOf = Callable[[str, str], str]


@dataclass(frozen=True, slots=True)
class Use:
    """One dimension of one limit: used in the last minute, out of how many per minute."""

    used: int
    limit: int | None

    @property
    def percent(self) -> float | None:
        return None if self.limit is None else min(100.0, 100.0 * self.used / self.limit)


@dataclass(frozen=True, slots=True)
class LimitUse:
    provider: str
    model: str | None
    requests: Use
    input_tokens: Use
    output_tokens: Use
    cooldown_s: float = 0.0


def provider_resolver(
    limits: Sequence[RateLimit], agents: AgentRegistry, default_provider: str
) -> ProviderOf:
    """``(agent, model) -> provider`` for the calls in the event stream."""
    by_model = {limit.model: limit.provider for limit in limits if limit.model is not None}

    def provider_of(agent: str, model: str) -> str:
        for name in (model, snapshot_of(model)):
            if name is not None and name in by_model:
                return by_model[name]
        if agent in agents:
            configured = agents.get(agent).provider
            if configured is not None:
                return configured
        return default_provider

    return provider_of


def _applies(limit: RateLimit, provider: str, model: str) -> bool:
    return limit.provider == provider and (limit.model is None or limit.model in (model, snapshot_of(model)))


def limit_use(limits: Sequence[RateLimit], calls: Sequence[Call], provider_of: ProviderOf) -> list[LimitUse]:
    """Each limit with what the calls of the last minute used of it."""
    resolved = [(provider_of(call.agent, call.model), call) for call in calls]
    uses = []
    for limit in limits:
        mine = [call for provider, call in resolved if _applies(limit, provider, call.model)]
        uses.append(
            LimitUse(
                provider=limit.provider,
                model=limit.model,
                requests=Use(len(mine), limit.requests_per_minute),
                input_tokens=Use(sum(call.input_tokens for call in mine), limit.input_tokens_per_minute),
                output_tokens=Use(sum(call.output_tokens for call in mine), limit.output_tokens_per_minute),
            )
        )
    return uses
