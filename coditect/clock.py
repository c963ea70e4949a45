"""Wall-clock milliseconds, the unit of ARQ's scores and of every timestamp coditect stores."""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    return int(time.time() * 1000)
