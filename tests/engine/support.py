"""Job functions that report to the test through ``ctx["probe"]``, and ways to read a job's result."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job, JobResult
from arq.worker import Retry, RetryJob, func

from coditect.jobs import JOB_NAME
from coditect.serialization import RemoteJobError, job_deserializer
from tests.support.fake_backend import QUEUE, now_ms

__all__ = [
    "FUNCTIONS",
    "Probe",
    "arq_job",
    "cancellation_of",
    "failure_of",
    "result_info",
    "result_of",
    "true",
]


@dataclass
class Probe:
    """What the job functions saw: each call's (job id, try), start times, contexts; a gate to hold them."""

    calls: list[tuple[str, int]] = field(default_factory=list)
    contexts: list[dict[str, Any]] = field(default_factory=list)
    starts_ms: dict[str, list[int]] = field(default_factory=dict)
    started: dict[str, asyncio.Event] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    max_running: int = 0
    retried_at_ms: int = 0

    def record(self, ctx: dict[str, Any]) -> None:
        job_id = ctx["job_id"]
        self.calls.append((job_id, ctx["job_try"]))
        self.contexts.append(dict(ctx))
        self.starts_ms.setdefault(job_id, []).append(now_ms())
        self.event(job_id).set()

    def event(self, job_id: str) -> asyncio.Event:
        return self.started.setdefault(job_id, asyncio.Event())

    async def wait_started(self, *job_ids: str) -> None:
        async with asyncio.timeout(5):
            for job_id in job_ids:
                await self.event(job_id).wait()


async def echo(ctx: dict[str, Any], value: Any = None) -> dict[str, Any]:
    ctx["probe"].record(ctx)
    return {"value": value, "try": ctx["job_try"], "score": ctx["score"]}


async def add(ctx: dict[str, Any], a: int, b: int, c: int = 0) -> int:
    ctx["probe"].record(ctx)
    return a + b + c


async def hold(ctx: dict[str, Any]) -> str:
    """Runs until the test sets ``probe.release``."""
    probe: Probe = ctx["probe"]
    probe.record(ctx)
    probe.running += 1
    probe.max_running = max(probe.max_running, probe.running)
    try:
        await probe.release.wait()
    finally:
        probe.running -= 1
    return "released"


async def hold_first_try(ctx: dict[str, Any]) -> dict[str, Any]:
    """Blocks for ever on its first try (until cancelled); returns on any later one."""
    ctx["probe"].record(ctx)
    if ctx["job_try"] == 1:
        await asyncio.Event().wait()
    return {"try": ctx["job_try"]}


async def retry_once(ctx: dict[str, Any], defer_s: float) -> dict[str, Any]:
    probe: Probe = ctx["probe"]
    probe.record(ctx)
    if ctx["job_try"] == 1:
        probe.retried_at_ms = now_ms()
        raise Retry(defer=defer_s)
    return {"try": ctx["job_try"], "score": ctx["score"]}


async def always_retry(ctx: dict[str, Any]) -> None:
    ctx["probe"].record(ctx)
    raise Retry(defer=0)


async def retry_job_once(ctx: dict[str, Any]) -> dict[str, Any]:
    ctx["probe"].record(ctx)
    if ctx["job_try"] == 1:
        raise RetryJob()
    return {"try": ctx["job_try"]}


async def raise_cancelled(ctx: dict[str, Any]) -> None:
    ctx["probe"].record(ctx)
    raise asyncio.CancelledError("the job cancelled itself")


class ErrorWithExtra(ValueError):
    """ARQ logs ``extra()`` of a failing job's exception with the failure."""

    def extra(self) -> dict[str, str]:
        return {"order": "o-17"}


async def fail(ctx: dict[str, Any]) -> None:
    ctx["probe"].record(ctx)
    raise ErrorWithExtra("no such order")


async def recording_task_job(ctx: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """Registered as coditect's job name, so that batches submitted by ``BatchStore`` reach it."""
    ctx["probe"].record(ctx)
    return {"task_id": task["id"], "status": "success", "attempts": ctx["job_try"]}


FUNCTIONS = [
    func(recording_task_job, name=JOB_NAME),
    func(echo, name="echo"),
    func(add, name="add"),
    func(hold, name="hold"),
    func(hold, name="slow", timeout=0.1),
    func(hold_first_try, name="hold_first_try"),
    func(retry_once, name="retry_once"),
    func(always_retry, name="always_retry"),
    func(always_retry, name="retry_at_most_once", max_tries=1),
    func(retry_job_once, name="retry_job_once"),
    func(raise_cancelled, name="raise_cancelled"),
    func(fail, name="fail"),
    func(echo, name="echo_forever", keep_result_forever=True),
]


def arq_job(pool: ArqRedis, job_id: str, queue_name: str = QUEUE) -> Job:
    return Job(job_id, pool, _queue_name=queue_name, _deserializer=job_deserializer)


async def result_of(pool: ArqRedis, job_id: str, timeout_s: float = 5.0) -> Any:
    return await arq_job(pool, job_id).result(timeout=timeout_s, poll_delay=0.01)


async def result_info(pool: ArqRedis, job_id: str) -> JobResult:
    info = await arq_job(pool, job_id).result_info()
    assert info is not None, f"no result for {job_id}"
    return info


async def cancellation_of(pool: ArqRedis, job_id: str) -> asyncio.CancelledError:
    """The CancelledError an aborted job's result reads back as (what ARQ's Job.abort looks for)."""
    with pytest.raises(asyncio.CancelledError) as caught:
        await result_of(pool, job_id)
    return caught.value


async def failure_of(pool: ArqRedis, job_id: str) -> RemoteJobError:
    with pytest.raises(RemoteJobError) as caught:
        await result_of(pool, job_id)
    return caught.value


async def true(value: bool) -> bool:
    """An awaitable probe for ``wait_until`` from a plain condition."""
    return value
