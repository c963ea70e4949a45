"""Live workers: each worker says who it is and how it is doing, every lease/3, with a short TTL.

``coditect:workers`` (a sorted set: worker token -> last heartbeat ms) indexes them; each worker's
hash ``coditect:worker:<token>`` holds its name, queue, start time, jobs in flight and counts. A worker
that stops beating drops out once its TTL passes; readers also skip entries older than their TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from arq.connections import ArqRedis

from coditect.clock import now_ms
from coditect.keys import WORKER_KEY_PREFIX, WORKERS_KEY

if TYPE_CHECKING:
    from coditect.engine.worker import CoditectWorker

__all__ = ["WorkerInfo", "WorkerRegistry", "live_workers"]


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as it last described itself."""

    token: str
    name: str
    queue: str
    started_ms: int
    heartbeat_ms: int
    in_flight: int
    max_jobs: int
    complete: int
    failed: int
    retried: int


class WorkerRegistry:
    """One worker's entry in the registry."""

    def __init__(self, worker: CoditectWorker) -> None:
        self.worker = worker
        self.started_ms = now_ms()

    async def beat(self, ttl_s: float) -> None:
        worker = self.worker
        key = WORKER_KEY_PREFIX + worker.token
        now = now_ms()
        async with worker.pool.pipeline(transaction=False) as pipe:
            pipe.hset(
                key,
                mapping={
                    "name": worker.worker_name,
                    "queue": worker.queue_name,
                    "started": self.started_ms,
                    "heartbeat": now,
                    "in_flight": len(worker.tasks),
                    "max_jobs": worker.max_jobs,
                    "complete": worker.jobs_complete,
                    "failed": worker.jobs_failed,
                    "retried": worker.jobs_retried,
                    "ttl_ms": int(ttl_s * 1000),
                },
            )
            pipe.pexpire(key, int(ttl_s * 1000))
            pipe.zadd(WORKERS_KEY, {worker.token: now})
            pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 86_400_000)
            await pipe.execute()

    async def leave(self) -> None:
        async with self.worker.pool.pipeline(transaction=False) as pipe:
            pipe.delete(WORKER_KEY_PREFIX + self.worker.token)
            pipe.zrem(WORKERS_KEY, self.worker.token)
            await pipe.execute()


async def live_workers(redis: ArqRedis, queue_name: str | None = None) -> list[WorkerInfo]:
    """Workers whose last heartbeat is within their TTL (of one queue, when given), newest first."""
    tokens = [token.decode() for token in await redis.zrevrange(WORKERS_KEY, 0, 999)]
    if not tokens:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for token in tokens:
            pipe.hgetall(WORKER_KEY_PREFIX + token)
        entries = await pipe.execute()
    now = now_ms()
    alive = []
    for token, raw in zip(tokens, entries, strict=True):
        if not raw:
            continue
        data = {k.decode(): v.decode() for k, v in raw.items()}
        if now - int(data.get("heartbeat", 0)) > int(data.get("ttl_ms", 0)):
            continue
        if queue_name is not None and data.get("queue") != queue_name:
            continue
        alive.append(
            WorkerInfo(
                token=token,
                name=data.get("name", ""),
                queue=data.get("queue", ""),
                started_ms=int(data.get("started", 0)),
                heartbeat_ms=int(data.get("heartbeat", 0)),
                in_flight=int(data.get("in_flight", 0)),
                max_jobs=int(data.get("max_jobs", 0)),
                complete=int(data.get("complete", 0)),
                failed=int(data.get("failed", 0)),
                retried=int(data.get("retried", 0)),
            )
        )
    return alive
