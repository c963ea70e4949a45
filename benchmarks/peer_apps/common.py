"""What every library's module shares: the environment it is configured by, and the ready line."""

from __future__ import annotations

import os
import sys
from typing import Protocol

__all__ = [
    "READY_LINE",
    "Client",
    "WrongResults",
    "check_values",
    "concurrency",
    "pooled_redis_url",
    "redis_url",
    "say_ready",
]

READY_LINE = "peer worker ready"
RESULT_TIMEOUT_S = 120.0


class WrongResults(Exception):
    """A run returned other values than the ones its jobs were given."""


class Client(Protocol):
    """One library's client side: enqueue jobs and read their results back, checked."""

    async def batch(self, count: int, sleep_s: float) -> None:
        """``count`` jobs enqueued at once, then every result read back and checked."""

    async def round_trip(self, value: int) -> None:
        """One job enqueued, then its result awaited and checked."""

    async def close(self) -> None: ...


def redis_url() -> str:
    # Required: the benchmark never falls back to a Redis on the default port.
    return os.environ["BENCH_PEERS_REDIS_URL"]


def pooled_redis_url() -> str:
    """The URL with a connection pool as large as the concurrency needs.

    redis-py 8 caps a pool at 100 connections unless told otherwise, and SAQ (a connection per
    concurrent dequeue) and Dramatiq (one per thread storing a result) fail past it.
    """
    separator = "&" if "?" in redis_url() else "?"
    return f"{redis_url()}{separator}max_connections={concurrency() + 50}"


def concurrency() -> int:
    return int(os.environ.get("BENCH_PEERS_CONCURRENCY", "100"))


def say_ready(library: str) -> None:
    """The line the benchmark waits for before it measures this worker (written by every library alike)."""
    print(f"{READY_LINE}: {library} pid {os.getpid()}", file=sys.stderr, flush=True)


def check_values(values: list[object], count: int) -> None:
    if len(values) != count:
        raise WrongResults(f"{count} jobs but {len(values)} results")
    if values != list(range(count)):
        wrong = sum(1 for i, value in enumerate(values) if value != i)
        raise WrongResults(f"{wrong} of {count} results differ from their job's argument")
