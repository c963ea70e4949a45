"""CoditectWorker: ARQ's ``Worker`` with a faster, lease-based way to claim, run and finish jobs.

What stays ARQ's: the constructor and its settings, registered functions (``func``), ``Retry``,
aborts, cron jobs, the health check, signal handling and shutdown, and the Redis key layout, so
plain ARQ clients enqueue and read results as usual. What changes, and why:

- **Claim**: one script call claims up to ``max_jobs`` due jobs (ARQ: three round trips per job,
  every worker racing with WATCH for the same queue head).
- **Lease**: a claimed job's score becomes its lease deadline and a heartbeat renews it; a killed
  worker's jobs run again after one lease (``CODITECT_LEASE_S``), not after the job timeout + 10 s.
- **Wake-up**: idle workers wait on a pub/sub channel that enqueuers publish to, with the poll
  interval as a fallback, instead of polling every 0.5 s.
- **Finish**: results of jobs that finish together are written in one script call, and the batch's
  waiter is told through its done list.
- **Redis errors** are retried with backoff instead of ending the worker process.

``arq coditect.jobs.WorkerSettings`` builds a plain ``arq.worker.Worker``; coditect's start-up hook
turns that object into a ``CoditectWorker`` (``adopt``), so both entry points run this code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
import uuid
from typing import Any

from arq.cron import CronJob
from arq.jobs import serialize_result
from arq.utils import ms_to_datetime
from arq.worker import Function, JobExecutionFailed, Retry, RetryJob, Worker
from redis.exceptions import RedisError, ResponseError

from coditect.backoff import redis_backoff_s
from coditect.connections import create_arq_pool
from coditect.engine.flusher import FinishRecord, ResultFlusher
from coditect.keys import done_key, leases_key, split_job_id, wake_channel
from coditect.lua import script
from coditect.serialization import job_deserializer

__all__ = ["CoditectWorker", "adopt"]

logger = logging.getLogger(__name__)

DEFAULT_LEASE_S = 10.0
MAX_CLAIM = 1000


def adopt(worker: Worker, lease_s: float) -> CoditectWorker:
    """Turn a running ``arq.worker.Worker`` into a ``CoditectWorker`` (same object, same settings)."""
    if not isinstance(worker, CoditectWorker):
        worker.__class__ = CoditectWorker
    assert isinstance(worker, CoditectWorker)
    worker.lease_s = lease_s
    return worker


def calling_worker() -> Worker | None:
    """The ARQ worker whose ``main()`` is running the current task (ARQ passes hooks only ``ctx``)."""
    task = asyncio.current_task()
    frame = getattr(task.get_coro(), "cr_frame", None) if task is not None else None
    candidate = frame.f_locals.get("self") if frame is not None else None
    return candidate if isinstance(candidate, Worker) else None


class CoditectWorker(Worker):
    """An ARQ worker that claims in batches, holds jobs by lease, and wakes on enqueue."""

    lease_s: float = DEFAULT_LEASE_S

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_arq_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        await self._log_server_info()
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        await self._run_engine()

    async def close(self) -> None:
        """Stop, let running jobs record their outcome, run ``on_shutdown``, close the pool."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if self._pool is None:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            async with asyncio.timeout(self.lease_s):
                await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None

    async def _poll_iteration(self) -> None:
        # Reached only when ARQ's own main() runs an adopted worker: the engine takes over the loop.
        await self._run_engine()

    async def _log_server_info(self) -> None:
        try:
            info: dict[str, Any] = await self.pool.info(section="Server")
        except ResponseError:
            logger.info("redis server without INFO (embedded backend)")
            return
        logger.info("redis_version=%s", info.get("redis_version", "?"))

    # -- the engine ---------------------------------------------------------------------------

    async def _run_engine(self) -> None:
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease_ms = int(self.lease_s * 1000)
        self._wake = asyncio.Event()
        self._claim = self.pool.register_script(script("claim"))
        self._heartbeat_script = self.pool.register_script(script("heartbeat"))
        self._flusher = ResultFlusher(
            self.pool.register_script(script("finish")),
            queue_name=self.queue_name,
            token=self._token,
            channel=wake_channel(self.queue_name),
            reply_timeout_s=self.lease_s,
        )
        self._flusher.start()
        helpers = [
            asyncio.create_task(self._listen_for_wakeups(), name="coditect-wakeups"),
            asyncio.create_task(self._renew_leases(), name="coditect-leases"),
        ]
        logger.info(
            "engine: lease %.1f s, max_jobs %d, queue %s", self.lease_s, self.max_jobs, self.queue_name
        )
        try:
            await self._claim_loop()
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            await self._flusher.close()

    async def _claim_loop(self) -> None:
        failures = 0
        next_housekeeping = 0.0
        while True:
            self._wake.clear()
            try:
                # A reply that never comes (a connection dropped without an RST) must not stop the
                # loop: after a lease, redis-py drops that connection and the next call opens another.
                async with asyncio.timeout(self.lease_s):
                    claimed = limit = 0
                    if self.allow_pick_jobs:
                        limit = min(self.max_jobs - len(self.tasks), MAX_CLAIM)
                        if limit > 0:
                            claimed = await self._claim_jobs(limit)
                    if time.monotonic() >= next_housekeeping:
                        await self._housekeeping()
                        next_housekeeping = time.monotonic() + self.poll_delay_s
                if self.burst and await self._burst_done():  # it waits for running jobs: no timeout
                    return
                failures = 0
            except (RedisError, OSError) as err:  # OSError includes the TimeoutError above
                delay = redis_backoff_s(failures)
                failures += 1
                logger.warning(
                    "redis error in worker loop (%s); retrying in %.2f s", str(err) or repr(err), delay
                )
                await asyncio.sleep(delay)
                continue
            if claimed and claimed == limit:
                continue  # there may be more due jobs: claim again before waiting
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_delay_s):
                        await self._wake.wait()

    async def _claim_jobs(self, limit: int) -> int:
        rows = await self._claim(
            keys=[self.queue_name, leases_key(self.queue_name)],
            args=[_now_ms(), self._lease_ms, limit, self._token],
        )
        for job_id_b, payload, job_try, score, aborted in rows:
            job_id = job_id_b.decode()
            task = asyncio.create_task(
                self._run_claimed(job_id, payload, int(job_try), int(float(score)), aborted)
            )
            self.tasks[job_id] = task
            task.add_done_callback(functools.partial(self._job_done, job_id))
        return len(rows)

    def _job_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(job_id) is task:
            del self.tasks[job_id]
        self._wake.set()  # a slot is free

    async def _housekeeping(self) -> None:
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        await self.heart_beat()  # ARQ's: health check key and cron jobs

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            return True
        return False

    async def _listen_for_wakeups(self) -> None:
        failures = 0
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(wake_channel(self.queue_name))
                    failures = 0
                    self._wake.set()  # (re)subscribed: look for work that came meanwhile
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._wake.set()
            except (RedisError, OSError) as err:
                delay = redis_backoff_s(failures)
                failures += 1
                logger.debug("wake-up channel lost (%s); resubscribing in %.2f s", err, delay)
                await asyncio.sleep(delay)

    async def _renew_leases(self) -> None:
        interval = self.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            job_ids = list(self.tasks)
            for start in range(0, len(job_ids), 1000):
                chunk = job_ids[start : start + 1000]
                try:
                    async with asyncio.timeout(interval):
                        await self._heartbeat_script(
                            keys=[self.queue_name, leases_key(self.queue_name)],
                            args=[_now_ms(), self._lease_ms, self._token, *chunk],
                        )
                except (RedisError, OSError) as err:
                    logger.warning("renewing %d lease(s) failed: %s", len(chunk), str(err) or repr(err))

    # -- one job ------------------------------------------------------------------------------

    async def _run_claimed(self, job_id: str, payload: bytes, job_try: int, score: int, aborted: int) -> None:
        try:
            record = await self._execute(job_id, payload, job_try, score, bool(aborted))
        except Exception as err:  # a bug here must not lose the job: record it as failed
            logger.exception("job %s: internal error", job_id)
            record = self._done(job_id, "<unknown>", job_try, 0, False, err, _now_ms())
        await self._flusher.submit(record)

    async def _execute(
        self, job_id: str, payload: bytes, job_try: int, score: int, aborted: bool
    ) -> FinishRecord:
        started_ms = _now_ms()
        if not payload:
            self.jobs_failed += 1
            return self._done(
                job_id, "<unknown>", job_try, 0, False, JobExecutionFailed("job expired"), started_ms
            )
        try:
            job = (self.job_deserializer or job_deserializer)(payload)
            name, args, kwargs, enqueued_ms = job["f"], job["a"], job["k"], job["et"]
        except Exception as err:
            logger.warning("job %s: payload is not a coditect JSON job (%s); not executed", job_id, err)
            self.jobs_failed += 1
            error = JobExecutionFailed(f"unreadable job payload, not executed: {err}")
            return self._done(job_id, "<unknown>", job_try, 0, False, error, started_ms)
        function = self.functions.get(name)
        if function is None:
            self.jobs_failed += 1
            error = JobExecutionFailed(f"function {name!r} not found")
            return self._done(job_id, name, job_try, enqueued_ms, False, error, started_ms)
        if aborted:
            self.jobs_failed += 1
            return self._done(job_id, name, job_try, enqueued_ms, False, asyncio.CancelledError(), started_ms)
        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        if job_try > max_tries:
            # Every earlier start ended without a result (a crash, a shutdown, a Retry): record those.
            self.jobs_failed += 1
            error = JobExecutionFailed(f"max {max_tries} retries exceeded")
            return self._done(job_id, name, max_tries, enqueued_ms, False, error, started_ms, function)

        ctx = {
            **self.ctx, "job_id": job_id, "job_try": job_try, "enqueue_time": ms_to_datetime(enqueued_ms),
            "score": score,
        }  # fmt: skip
        if self.on_job_start:
            await self.on_job_start(ctx)
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        this_task = asyncio.current_task()
        assert this_task is not None
        self.job_tasks[job_id] = this_task  # what ARQ's abort check cancels
        try:
            async with asyncio.timeout(timeout_s):
                result = await function.coroutine(ctx, *args, **kwargs)
        except Retry as err:
            self.jobs_retried += 1
            return FinishRecord("again", job_id, _now_ms() + (err.defer_score or 0))
        except RetryJob:
            self.jobs_retried += 1
            return FinishRecord("again", job_id, _now_ms())
        except asyncio.CancelledError:
            this_task.uncancel()  # handled here: the job's outcome must still be recorded
            if job_id in self.aborting_tasks:
                self.aborting_tasks.discard(job_id)
                self.jobs_failed += 1
                return self._done(
                    job_id, name, job_try, enqueued_ms, False, asyncio.CancelledError(), started_ms
                )
            # The worker is shutting down: put the job back for another worker, now.
            self.jobs_retried += 1
            logger.info("job %s cancelled by shutdown, back in the queue", job_id)
            return FinishRecord("again", job_id, _now_ms())
        except Exception as err:
            self.jobs_failed += 1
            logger.warning("job %s failed: %s: %s", job_id, type(err).__name__, err)
            return self._done(job_id, name, job_try, enqueued_ms, False, err, started_ms, function)
        finally:
            self.job_tasks.pop(job_id, None)
            if self.on_job_end:
                await self.on_job_end(ctx)
        self.jobs_complete += 1
        return self._done(job_id, name, job_try, enqueued_ms, True, result, started_ms, function)

    def _done(
        self,
        job_id: str,
        function_name: str,
        job_try: int,
        enqueued_ms: int,
        success: bool,
        result: Any,
        started_ms: int,
        function: Function | CronJob | None = None,
    ) -> FinishRecord:
        """A final record in ARQ's result format (arguments left out: they are in the job already)."""
        keep_forever = self.keep_result_forever
        keep_s = self.keep_result_s
        if function is not None:
            keep_forever = (
                keep_forever if function.keep_result_forever is None else function.keep_result_forever
            )
            keep_s = keep_s if function.keep_result_s is None else function.keep_result_s
        payload = serialize_result(
            function_name, (), {}, job_try, enqueued_ms, success, result, started_ms, _now_ms(),
            f"{job_id}:{function_name}", self.queue_name, job_id=job_id, serializer=self.job_serializer,
        )  # fmt: skip
        ttl_ms = -1 if keep_forever else int(keep_s * 1000)
        batch = split_job_id(job_id)
        return FinishRecord(
            "done", job_id, payload or b"", ttl_ms if payload else 0, done_key(batch[0]) if batch else ""
        )


def _now_ms() -> int:
    return int(time.time() * 1000)
