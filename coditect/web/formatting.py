"""How numbers, times and money read on the dashboard's pages (Jinja filters)."""

from __future__ import annotations

from datetime import UTC, datetime

from coditect.cli.render import format_duration, format_usd

__all__ = ["FILTERS", "ago", "duration", "moment", "money", "token_pair", "tokens"]


def duration(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def money(value: float | None) -> str:
    return "-" if value is None else format_usd(value)


def moment(value: datetime | None) -> str:
    """``2026-11-27 13:12:01`` in UTC."""
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(then_ms: int, now_ms: int) -> str:
    """``3.2 s ago``, from two wall-clock times in milliseconds."""
    return f"{max(0, now_ms - then_ms) / 1000:.1f} s ago"


def tokens(count: float | None) -> str:
    return "-" if not count else f"{int(count):,}"


def token_pair(tokens_in: int, tokens_out: int) -> str:
    """``1,234 + 56``: input (with the prompt cache's) and output tokens."""
    return "-" if not tokens_in and not tokens_out else f"{tokens_in:,} + {tokens_out:,}"


FILTERS = {"duration": duration, "money": money, "moment": moment, "tokens": tokens}
