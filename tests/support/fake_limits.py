"""What the fake provider enforces and emulates like a real one: rate limits over short intervals,
the prompt cache, and the rate-limit headers on every answer.

Thread-safe: the fake provider answers each connection on a thread of its own.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = ["Admission", "PromptCache", "ProviderLimits", "Served", "retry_after_header"]

# What the headers report for a dimension without an enforced limit (Anthropic tier-4-like figures).
DEFAULT_REQUESTS_PER_MINUTE = 4_000
DEFAULT_INPUT_TOKENS_PER_MINUTE = 2_000_000
DEFAULT_OUTPUT_TOKENS_PER_MINUTE = 400_000
CACHE_TTL_S = 300.0


@dataclass(frozen=True)
class Served:
    """One API request as the fake answered it. ``at`` is the fake's monotonic clock at arrival."""

    at: float
    status: int
    client: str  # the request's ``x-fake-client`` header, to tell processes apart
    input_tokens: int  # what counted toward the input-token limit: uncached input + cache writes
    output_tokens: int
    rate_limited: bool  # a 429 from the fake's own limiter (not a planned one)


@dataclass(frozen=True)
class Admission:
    """The limiter's answer for one request: admitted, or a 429 with its retry-after."""

    admitted: bool
    retry_after_s: float = 0.0
    exhausted: str = ""  # "requests" or "input-tokens" when refused


@dataclass
class ProviderLimits:
    """Limits enforced over short intervals, as real providers do, so a minute's allowance sent in a
    burst gets 429s.

    - requests: at most ``n`` requests in any rolling window of ``n * 60 / requests_per_minute``
      seconds, with ``n = max(1, requests_per_minute // 60)`` (600/min: 10 in any second);
    - input tokens: a token bucket refilled continuously at ``input_tokens_per_minute / 60`` per second,
      holding at most ``input_token_burst`` (default: one second's worth), full at the start.
    """

    requests_per_minute: int | None = None
    input_tokens_per_minute: int | None = None
    input_token_burst: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _window: deque[float] = field(default_factory=deque, repr=False)
    _level: float = field(default=-1.0, repr=False)
    _refilled_at: float = field(default=0.0, repr=False)
    _minute: deque[tuple[float, int, int]] = field(default_factory=deque, repr=False)

    @property
    def enforced(self) -> bool:
        return bool(self.requests_per_minute or self.input_tokens_per_minute)

    def _request_window(self) -> tuple[int, float]:
        assert self.requests_per_minute
        allowed = max(1, self.requests_per_minute // 60)
        return allowed, allowed * 60.0 / self.requests_per_minute

    def _burst(self) -> float:
        assert self.input_tokens_per_minute
        return float(self.input_token_burst or max(1.0, self.input_tokens_per_minute / 60))

    def admit(self, now: float, input_tokens: int) -> Admission:
        """Admit a request arriving at ``now`` that counts ``input_tokens``, or say how long to wait."""
        with self._lock:
            waits: list[tuple[float, str]] = []
            if self.requests_per_minute:
                allowed, window_s = self._request_window()
                while self._window and self._window[0] <= now - window_s:
                    self._window.popleft()
                if len(self._window) >= allowed:
                    waits.append((self._window[0] + window_s - now, "requests"))
            if self.input_tokens_per_minute:
                rate = self.input_tokens_per_minute / 60
                burst = self._burst()
                if self._level < 0:
                    self._level, self._refilled_at = burst, now
                self._level = min(burst, self._level + (now - self._refilled_at) * rate)
                self._refilled_at = now
                if input_tokens > self._level:
                    waits.append(((input_tokens - self._level) / rate, "input-tokens"))
            if waits:
                wait_s, exhausted = max(waits)
                return Admission(False, wait_s, exhausted)
            if self.requests_per_minute:
                self._window.append(now)
            if self.input_tokens_per_minute:
                self._level -= input_tokens
            return Admission(True)

    def record(self, now: float, input_tokens: int, output_tokens: int) -> None:
        """Count an answered request toward the per-minute figures the headers report."""
        with self._lock:
            self._minute.append((now, input_tokens, output_tokens))

    def headers(self, now: float, *, openai: bool, refused: Admission | None = None) -> dict[str, str]:
        """The rate-limit headers of an answer: remaining per-minute allowance and when it is whole.

        The per-minute figures are informational (the last minute's tally); what is enforced is the
        short-interval limit above. A refused request reports the exhausted dimension at 0.
        """
        with self._lock:
            while self._minute and self._minute[0][0] <= now - 60:
                self._minute.popleft()
            oldest = self._minute[0][0] if self._minute else now
            reset_s = max(0.0, oldest + 60 - now)
            used_in = sum(entry[1] for entry in self._minute)
            used_out = sum(entry[2] for entry in self._minute)
            count = len(self._minute)
        dims = {
            "requests": (self.requests_per_minute or DEFAULT_REQUESTS_PER_MINUTE, count),
            "input-tokens": (self.input_tokens_per_minute or DEFAULT_INPUT_TOKENS_PER_MINUTE, used_in),
            "output-tokens": (DEFAULT_OUTPUT_TOKENS_PER_MINUTE, used_out),
        }
        values: dict[str, tuple[int, int, float]] = {}
        for name, (limit, used) in dims.items():
            remaining, reset = max(0, limit - used), reset_s
            if refused is not None and refused.exhausted == name:
                remaining, reset = 0, refused.retry_after_s
            values[name] = (limit, remaining, reset)
        tokens = min((values["input-tokens"], values["output-tokens"]), key=lambda value: value[1])
        values["tokens"] = tokens
        if openai:
            return _openai_headers(values)
        moment = datetime.now(UTC)
        headers: dict[str, str] = {}
        for name, (limit, remaining, reset) in values.items():
            headers[f"anthropic-ratelimit-{name}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(moment + timedelta(seconds=reset))
        return headers


def _openai_headers(values: dict[str, tuple[int, int, float]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, source in (("requests", "requests"), ("tokens", "tokens")):
        limit, remaining, reset = values[source]
        headers[f"x-ratelimit-limit-{name}"] = str(limit)
        headers[f"x-ratelimit-remaining-{name}"] = str(remaining)
        headers[f"x-ratelimit-reset-{name}"] = f"{math.ceil(reset * 1000)}ms"
    return headers


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up, at least 1: the form Anthropic sends."""
    return str(max(1, math.ceil(seconds)))


class PromptCache:
    """Anthropic's prompt cache, for the system prompt: the prefix up to its last ``cache_control``
    block is written on first use and read (and kept another five minutes) while it lives.

    Unlike the real cache there is no minimum cacheable length.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expires: dict[str, float] = {}

    @staticmethod
    def cacheable_prefix(system: object) -> str:
        """The text of the system blocks up to the last one marked ``cache_control``; "" if none is."""
        if not isinstance(system, list):
            return ""
        last = max(
            (i for i, block in enumerate(system) if isinstance(block, dict) and block.get("cache_control")),
            default=-1,
        )
        return "".join(block.get("text", "") for block in system[: last + 1] if isinstance(block, dict))

    def is_cached(self, key: str, now: float) -> bool:
        with self._lock:
            return self._expires.get(key, 0.0) > now

    def use(self, key: str, now: float) -> None:
        """Write or refresh ``key``."""
        with self._lock:
            self._expires[key] = now + CACHE_TTL_S

    def clear(self) -> None:
        with self._lock:
            self._expires.clear()
