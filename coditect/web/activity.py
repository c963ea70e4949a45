"""What finished in the last hour, from the stream of every batch's events.

The dashboard keeps per-minute totals (tasks finished by outcome, cost, tokens) and the LLM calls
of the last minute (for rate-limit use). It reads the stream incrementally: each refresh reads only
the events added since the previous one, so a page view costs one short read, however busy the
hour was. The stream is capped (``CODITECT_EVENTS_MAX_LEN``): what it no longer holds is not shown.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from arq.connections import ArqRedis

from coditect.client.events import Event, stream_key

__all__ = ["Activity", "Call", "Minute"]

WINDOW_S = 3600
CALL_WINDOW_S = 60
PAGE = 5000
# A refresh reads at most this many events; a longer backlog is caught up by the next refreshes.
MAX_READ = 50_000


@dataclass(slots=True)
class Minute:
    """Tasks that ended within one minute, and what they cost."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    cost_usd: float = 0.0
    tokens: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True, slots=True)
class Call:
    """A task that called a model, as its final event reports it (all its attempts' tokens)."""

    at_ms: int
    agent: str
    model: str
    input_tokens: int
    output_tokens: int


class Activity:
    """Rolling totals of the last hour, fed from the event stream of all batches."""

    def __init__(self, *, window_s: int = WINDOW_S) -> None:
        self.window_s = window_s
        self._minutes: dict[int, Minute] = {}
        self._calls: deque[Call] = deque()
        self._last: str | None = None
        self._lock = asyncio.Lock()

    async def refresh(self, redis: ArqRedis, now_ms: int) -> None:
        """Read the events added since the last refresh (at first: those of the last hour)."""
        async with self._lock:
            key = stream_key(None)
            start = f"{now_ms - self.window_s * 1000}-0" if self._last is None else f"({self._last}"
            read = 0
            while read < MAX_READ:
                entries = await redis.xrange(key, min=start, max="+", count=PAGE)
                for entry_id, fields in entries:
                    self._add(Event.from_entry(entry_id, fields))
                read += len(entries)
                if entries:
                    self._last = entries[-1][0].decode()
                    start = f"({self._last}"
                if len(entries) < PAGE:
                    break
            if self._last is None:
                self._last = f"{now_ms - self.window_s * 1000}-0"
            self._prune(now_ms)

    def _add(self, event: Event) -> None:
        if not event.is_final:
            return
        at_ms = int(event.id.partition("-")[0])
        minute = self._minutes.setdefault(at_ms // 60_000, Minute())
        if event.type == "task.succeeded":
            minute.succeeded += 1
        elif event.type == "task.cancelled":
            minute.cancelled += 1
        else:
            minute.failed += 1
        data = event.data
        minute.cost_usd += data.get("cost") or 0.0
        input_tokens, output_tokens = int(data.get("in", 0)), int(data.get("out", 0))
        minute.tokens += input_tokens + output_tokens + int(data.get("cache_read", 0))
        minute.tokens += int(data.get("cache_write", 0))
        model = str(data.get("model", ""))
        if model:
            self._calls.append(Call(at_ms, str(data.get("agent", "")), model, input_tokens, output_tokens))

    def _prune(self, now_ms: int) -> None:
        oldest_minute = (now_ms - self.window_s * 1000) // 60_000
        for minute in [m for m in self._minutes if m < oldest_minute]:
            del self._minutes[minute]
        while self._calls and self._calls[0].at_ms < now_ms - CALL_WINDOW_S * 1000:
            self._calls.popleft()

    def minutes(self, now_ms: int) -> list[tuple[int, Minute]]:
        """One entry per minute of the window, oldest first: (minute start in ms, its totals)."""
        last = now_ms // 60_000
        count = self.window_s // 60
        return [(m * 60_000, self._minutes.get(m, Minute())) for m in range(last - count + 1, last + 1)]

    def calls(self, since_ms: int) -> list[Call]:
        """The calls that ended at or after ``since_ms`` (within the last minute)."""
        return [call for call in self._calls if call.at_ms >= since_ms]
