"""How long to wait before trying Redis again: one schedule for every retry loop in coditect."""

from __future__ import annotations

__all__ = ["REDIS_BACKOFF_S", "redis_backoff_s"]

REDIS_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def redis_backoff_s(failures: int) -> float:
    """The delay after ``failures`` failures in a row (0 for the first): doubling, capped at 2 s."""
    return REDIS_BACKOFF_S[min(failures, len(REDIS_BACKOFF_S) - 1)]
