"""The provider seam: messages in, text, token usage and the provider's rate-limit state out."""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import ClassVar, Literal

from coditect.models import TokenUsage

__all__ = ["Allowance", "BaseLlm", "LlmRequest", "LlmResponse", "Message", "RateLimitInfo", "snapshot_of"]

# A reset further away than this is not a per-minute limit (or not a sane header): not worth pausing for.
MAX_RESET_S = 300.0
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SNAPSHOT = re.compile(r"^(.+)-(\d{8})$")


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """Everything but the messages: the knobs an agent sets for a call."""

    system: str = ""
    max_tokens: int = 1024


@dataclass(frozen=True, slots=True)
class Allowance:
    """One rate-limit dimension as the provider reported it. ``None``: the header was absent or invalid.

    ``reset_s`` is relative: seconds from the response until the allowance is replenished.
    """

    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """The provider's rate-limit headers on one response.

    Anthropic sends ``anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,
    reset}`` (reset as an RFC 3339 time; ``tokens`` is the most restrictive token limit). OpenAI-style
    servers send ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (reset as a duration: ``1s``,
    ``6m0s``, ``120ms``).
    """

    requests: Allowance | None = None
    input_tokens: Allowance | None = None
    output_tokens: Allowance | None = None
    tokens: Allowance | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, now: datetime | None = None) -> RateLimitInfo | None:
        """The rate-limit state in ``headers`` (any casing), or None when there is none.

        Anthropic's absolute reset times are measured against the response's ``date`` header (the
        provider's own clock, so this worker's clock does not matter), else against ``now``.
        """
        lower = {name.lower(): value for name, value in headers.items()}
        reference = _response_date(lower.get("date")) or now or datetime.now(UTC)
        found: dict[str, Allowance] = {}
        for dimension, header in (
            ("requests", "requests"),
            ("input_tokens", "input-tokens"),
            ("output_tokens", "output-tokens"),
            ("tokens", "tokens"),
        ):
            prefix = f"anthropic-ratelimit-{header}-"
            allowance = Allowance(
                _count(lower.get(prefix + "limit")),
                _count(lower.get(prefix + "remaining")),
                _seconds_until(lower.get(prefix + "reset"), reference),
            )
            if allowance != Allowance():
                found[dimension] = allowance
        for dimension in ("requests", "tokens"):
            allowance = Allowance(
                _count(lower.get(f"x-ratelimit-limit-{dimension}")),
                _count(lower.get(f"x-ratelimit-remaining-{dimension}")),
                _duration_s(lower.get(f"x-ratelimit-reset-{dimension}")),
            )
            if allowance != Allowance() and dimension not in found:
                found[dimension] = allowance
        return cls(**found) if found else None

    def exhausted_for_s(self) -> float | None:
        """Seconds until every dimension whose remaining allowance is 0 is replenished; None if none is."""
        waits = [
            allowance.reset_s
            for allowance in (self.requests, self.input_tokens, self.output_tokens, self.tokens)
            if allowance is not None and allowance.remaining == 0 and allowance.reset_s
        ]
        return max(waits) if waits else None


@dataclass(frozen=True, slots=True)
class LlmResponse:
    """What a provider returned: the text, the tokens it counted, which model answered, its rate limits."""

    text: str
    provider: str
    model: str
    usage: TokenUsage = field(default_factory=TokenUsage)
    stop_reason: str | None = None
    rate_limit: RateLimitInfo | None = None


class BaseLlm(ABC):
    """A provider bound to one model. Instances are cheap; the HTTP client behind them is shared.

    ``generate_content_async`` raises ``TransientProviderError`` or ``PermanentProviderError``
    (``coditect.errors``) and nothing else on a failed call.
    """

    provider: ClassVar[str]

    def __init__(self, model: str) -> None:
        self.model = model

    @abstractmethod
    async def generate_content_async(
        self, messages: Sequence[Message], request: LlmRequest | None = None
    ) -> LlmResponse:
        """Send ``messages`` and return the reply."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} model={self.model!r}>"


def snapshot_of(model: str) -> str | None:
    """The model a dated snapshot belongs to (``claude-sonnet-4-5-20250929`` -> ``claude-sonnet-4-5``)."""
    matched = _SNAPSHOT.match(model)
    return matched.group(1) if matched else None


def _count(value: str | None) -> int | None:
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number >= 0 else None


def _bounded(seconds: float) -> float | None:
    return min(max(seconds, 0.0), MAX_RESET_S) if math.isfinite(seconds) else None


def _response_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _seconds_until(value: str | None, reference: datetime) -> float | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _bounded((moment - reference).total_seconds())


def _duration_s(value: str | None) -> float | None:
    """A Go-style duration (``6m0s``, ``1.5s``, ``120ms``) or a plain number of seconds."""
    if not value:
        return None
    text = value.strip()
    try:
        return _bounded(float(text))
    except ValueError:
        pass
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return _bounded(sum(float(number) * _GO_UNITS_S[unit] for number, unit in parts))
