"""Dramatiq: ``dramatiq benchmarks.peer_apps.dramatiq_app --processes 1 --threads N``, and its client.

A Redis broker with the results middleware on a Redis backend. Dramatiq logs no line per message.
"""

from __future__ import annotations

import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from benchmarks.peer_apps.common import (
    RESULT_TIMEOUT_S,
    WrongResults,
    check_values,
    pooled_redis_url,
    say_ready,
)

__all__ = ["DramatiqClient", "broker"]


class SayReady(Middleware):
    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        say_ready("dramatiq")


broker = RedisBroker(url=pooled_redis_url())
broker.add_middleware(Results(backend=RedisBackend(url=pooled_redis_url())))
broker.add_middleware(SayReady())
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def noop(value: int) -> int:
    return value


@dramatiq.actor(store_results=True)
def nap(value: int, seconds: float) -> int:
    time.sleep(seconds)  # Dramatiq's actors run on worker threads
    return value


class DramatiqClient:
    """``actor.send`` for each job, then ``message.get_result(block=True)`` for each (blocking reads)."""

    async def batch(self, count: int, sleep_s: float) -> None:
        if sleep_s:
            messages = [nap.send(i, sleep_s) for i in range(count)]
        else:
            messages = [noop.send(i) for i in range(count)]
        timeout_ms = int(RESULT_TIMEOUT_S * 1000)
        check_values([message.get_result(block=True, timeout=timeout_ms) for message in messages], count)

    async def round_trip(self, value: int) -> None:
        result = noop.send(value).get_result(block=True, timeout=int(RESULT_TIMEOUT_S * 1000))
        if result != value:
            raise WrongResults(f"job {value} returned {result!r}")

    async def close(self) -> None:
        broker.close()
