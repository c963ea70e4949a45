"""CoditectWorker: ARQ's ``Worker`` with a faster, lease-based way to claim, run and finish jobs.

What stays ARQ's: the constructor and every option it takes, registered functions (``func``),
``Retry``/``RetryJob``, aborts, cron jobs, the hooks (``on_job_start``, ``on_job_end``,
``after_job_end``), the health check, burst mode, signal handling, ARQ's per-job log lines on the
``arq.worker`` logger, result records (with the job's args and kwargs) and the Redis key layout, so
plain ARQ clients enqueue and read results as usual, and integrations that wrap ``Worker.run_job``
see every job. What changes, and why:

- **Claim**: one script call claims up to ``queue_read_limit`` due jobs (ARQ: three round trips per
  job, every worker racing with WATCH for the same queue head).
- **Lease**: a claimed job's score becomes its lease deadline and a heartbeat renews it; a killed
  worker's jobs run again after one lease (``CODITECT_LEASE_S``), not after the job timeout + 10 s.
- **Wake-up**: idle workers wait on a pub/sub channel that enqueuers publish to, with the poll
  interval as a fallback, instead of polling every 0.5 s.
- **Finish**: results of jobs that finish together are written in one script call; for a task of a
  batch the same call updates the batch (see ``coditect/lua/batch.lua``).
- **Slots**: a job waiting inside ``JobRun.idle()`` (delegation, rate limits) gives its slot back.
- **Redis errors** are retried with backoff instead of ending the worker process.
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
from collections.abc import Awaitable, Callable
from typing import Any

from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from coditect.backoff import redis_backoff_s
from coditect.clock import now_ms
from coditect.connections import create_arq_pool
from coditect.engine.arq_compat import run_job_entry
from coditect.engine.claimer import Claimer
from coditect.engine.claims import Claim, parse_rows, set_aside
from coditect.engine.flusher import ResultFlusher
from coditect.engine.jobrun import JobRunner
from coditect.engine.registry import WorkerRegistry
from coditect.engine.slots import Slot, Slots
from coditect.held import HeldConnections, HeldScript, retries_commands
from coditect.keys import WORKER_CHANNEL_PREFIX, leases_key, wake_channel
from coditect.lua import script
from coditect.redis_config import PolicyCheck, describe_server
from coditect.redis_errors import RefusalLog
from coditect.serialization import job_deserializer, job_serializer

__all__ = ["DEFAULT_LEASE_S", "CoditectWorker"]

logger = logging.getLogger(__name__)
arq_log = logging.getLogger("arq.worker")

DEFAULT_LEASE_S = 10.0
# Jobs one claim takes at most (it claims again at once when it got this many). A claim is one Lua
# call of ~17 Redis commands per job that blocks Redis meanwhile; 200 keeps a call to a few ms and
# lets the other workers, woken by the same message, take their share of a burst (a fan-out of
# 1,000 released at once started on one worker, over ~0.2 s, when a claim could take 1,000).
MAX_CLAIM = 200
DEFAULT_EVENTS_MAX_LEN = 100_000
DEFAULT_BATCH_KEEP_S = 86_400
_MESSAGE = (b"message", "message")  # a pub/sub message's kind, as bytes or decoded by the pool


class CoditectWorker(Worker):
    """An ARQ worker that claims in batches, holds jobs by lease, and wakes on enqueue.

    Takes every argument of ``arq.worker.Worker`` and, keyword-only: ``lease_s``; ``worker_name``
    (what events and results record; default ``host:pid``); ``events_max_len`` (length of the
    event streams); ``batch_keep_s`` (how long a finished batch stays readable).
    """

    def __init__(
        self,
        *args: Any,
        lease_s: float = DEFAULT_LEASE_S,
        worker_name: str = "",
        events_max_len: int = DEFAULT_EVENTS_MAX_LEN,
        batch_keep_s: int = DEFAULT_BATCH_KEEP_S,
        **kwargs: Any,
    ) -> None:
        # JSON unless told otherwise: a worker without a serializer must not write pickles.
        kwargs["job_serializer"] = kwargs.get("job_serializer") or job_serializer
        kwargs["job_deserializer"] = kwargs.get("job_deserializer") or job_deserializer
        super().__init__(*args, **kwargs)
        self.lease_s = lease_s
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self.events_max_len = events_max_len
        self.batch_keep_s = batch_keep_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self.started = asyncio.Event()  # set once on_startup has run and the engine takes jobs
        self._helpers: list[asyncio.Task[None]] = []
        self._slots = Slots(self.max_jobs, self._wake.set)
        # Claimed and not yet started, with the slot each holds. Keyed by job id as ARQ's run_job is
        # called, but a job put back in the queue can be claimed again before its previous task has
        # ended: each task's own slot and claim travel with it, never looked up by id after the start.
        self._claims: dict[str, tuple[Claim, Slot]] = {}
        self._child_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._runner = JobRunner(self)
        self._scripts: dict[str, AsyncScript] = {}
        self._refusals = RefusalLog()  # what Redis refuses (the ACL, memory) is said once, not every retry
        # A run_job wrapped by an integration (sentry-sdk's ARQ integration does) runs every job.
        self._run_job_entry: Callable[[Worker, str, int], Awaitable[None]] = run_job_entry(type(self))

    # -- lifecycle ----------------------------------------------------------------------------

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_arq_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        arq_log.info("Starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions))
        await self._log_server_info()
        self.ctx["redis"] = self.pool
        self.ctx["coditect_worker"] = self
        if self.on_startup:
            await self.on_startup(self.ctx)
        await self._run_engine()

    async def close(self) -> None:
        """Stop, let running jobs record their outcome, run ``on_shutdown``, close the pool."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if self._pool is None:
            return
        await self._stop_engine()
        with contextlib.suppress(RedisError, OSError):
            async with asyncio.timeout(self.lease_s):
                await self.pool.delete(self.health_check_key)
                await WorkerRegistry(self).leave()
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None
        self._scripts.clear()

    def registered_script(self, name: str) -> AsyncScript:
        """The Lua script ``name`` registered on this worker's pool (once: registering hashes it)."""
        registered = self._scripts.get(name)
        if registered is None:
            registered = self._scripts[name] = self.pool.register_script(script(name))
        return registered

    async def _log_server_info(self) -> None:
        await describe_server(self.pool, arq_log.info, PolicyCheck("worker"))

    # -- the engine ---------------------------------------------------------------------------

    def _script_head(self) -> list[bytes | str | int]:
        return [
            self.token,
            wake_channel(self.queue_name),
            now_ms(),
            self.events_max_len,
            int(self.batch_keep_s * 1000),
            self.expires_extra_ms,
            self.worker_name,
        ]

    async def _start_engine(self) -> None:
        """Scripts, the result flusher, the wake-up listener and the lease renewer (once)."""
        if self._helpers:
            return
        self._lease_ms = int(self.lease_s * 1000)
        # Claims and finishes, a script call each per job when idle, skip the pool's checkout check
        # (unless the pool was told to retry commands, which only redis-py's own path does).
        pool = self.pool.connection_pool
        self._held = None if retries_commands(pool) else HeldConnections(pool)
        self._claimer = Claimer(
            self.pool, queue_name=self.queue_name, token=self.token, lease_ms=self._lease_ms, held=self._held
        )
        self._heartbeat_script = self.pool.register_script(script("heartbeat"))
        finish = self.pool.register_script(script("finish"))
        self._flusher = ResultFlusher(
            HeldScript(self._held, finish) if self._held else finish,
            queue_name=self.queue_name,
            head=self._script_head,
            reply_timeout_s=self.lease_s,
        )
        self._flusher.start()
        registry = WorkerRegistry(self)
        self._helpers = [
            asyncio.create_task(self._listen(), name="coditect-wakeups"),
            asyncio.create_task(self._renew_leases(registry), name="coditect-leases"),
        ]
        logger.info(
            "engine: lease %.1f s, max_jobs %d, queue %s", self.lease_s, self.max_jobs, self.queue_name
        )

    async def _stop_engine(self) -> None:
        """Let running jobs record their outcome, then stop the helpers and write what is pending."""
        helpers, self._helpers = self._helpers, []
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if helpers:
            await self._flusher.close()
            if self._held is not None:
                await self._held.close()

    async def _run_engine(self) -> None:
        await self._start_engine()
        self.started.set()
        try:
            await self._claim_loop()
        finally:
            await self._stop_engine()

    async def _poll_iteration(self) -> None:
        """One round, as ARQ's: claim what is due (up to ``queue_read_limit``), then housekeeping."""
        await self._start_engine()
        limit = self._claim_limit()
        if limit > 0:
            await self._claim_jobs(limit)
        await self._housekeeping()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim and start these jobs, if due and not held (ARQ's ``start_jobs``)."""
        await self._start_engine()
        limit = self._claim_limit()
        if limit > 0:
            await self._claim_jobs(limit, only=[job_id.decode() for job_id in job_ids])

    def _claim_limit(self) -> int:
        if not self.allow_pick_jobs:
            return 0
        limit = min(self._slots.free, self.queue_read_limit, MAX_CLAIM)
        if self.burst and self.max_burst_jobs >= 0:
            limit = min(limit, self.max_burst_jobs - self._jobs_started())
        return max(limit, 0)

    async def _claim_loop(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        next_housekeeping = 0.0
        while True:
            self._wake.clear()
            try:
                claimed = 0
                limit = self._claim_limit()
                if limit > 0:
                    claimed = await self._claim_jobs(limit)  # the claimer has its own deadline
                if time.monotonic() >= next_housekeeping:
                    # A reply that never comes (a connection dropped without an RST) must not stop the
                    # loop: after a lease, redis-py drops that connection and the next call opens another.
                    async with asyncio.timeout(self.lease_s):
                        await self._housekeeping()
                    next_housekeeping = time.monotonic() + self.poll_delay_s
                if self.burst and await self._burst_done():  # it waits for running jobs: no timeout
                    return
                failures = 0
            except (RedisError, OSError) as err:  # OSError includes the TimeoutErrors of the deadlines
                delay = redis_backoff_s(failures)
                failures += 1
                if not self._refusals.report(err, "this worker takes no jobs until Redis allows it"):
                    logger.warning(
                        "redis error in worker loop (%s); retrying in %.2f s", str(err) or repr(err), delay
                    )
                await asyncio.sleep(delay)
                continue
            if claimed and claimed == limit:
                continue  # there may be more due jobs: claim again before waiting
            if not self._wake.is_set():
                # The poll interval as a timer that wakes the loop as a message would: cheaper, once
                # per job when idle, than a timeout scope around the wait.
                poll = loop.call_later(self.poll_delay_s, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    poll.cancel()

    async def _claim_jobs(self, limit: int, *, only: list[str] | None = None) -> int:
        rows = await self._claimer.claim(
            [
                # ARQ's clock, which rounds: a job enqueued "now" by an ARQ client (its score rounded
                # up to the next ms) is due to a claim that follows it within the same millisecond.
                timestamp_ms(),
                self._lease_ms,
                limit,
                self.token,
                self.worker_name,
                wake_channel(self.queue_name),
                self.events_max_len,
                int(self.batch_keep_s * 1000),
                self.expires_extra_ms,
                "1" if self.allow_abort_jobs else "0",
            ],
            only or (),
        )
        claims, poison = parse_rows(rows)
        if poison:
            for entry in poison:
                logger.error(
                    "queue entry %r set aside in the dead-letter list: %s", entry.raw_id, entry.reason
                )
            async with asyncio.timeout(self.lease_s):
                await set_aside(self.pool, self.queue_name, poison)
        for claim in claims:
            slot = self._slots.take()
            self._claims[claim.job_id] = (claim, slot)
            task: asyncio.Task[None] = asyncio.ensure_future(
                self._run_job_entry(self, claim.job_id, claim.score)
            )
            self.tasks[claim.job_id] = task
            task.add_done_callback(functools.partial(self._job_done, claim.job_id, slot))
        return len(rows)

    async def run_job(self, job_id: str, score: int) -> None:
        """Run one claimed job and record its outcome (ARQ's signature, so wrappers fit)."""
        claim, slot = self._claims.pop(job_id)
        await self._runner.run(claim, slot)

    def _job_done(self, job_id: str, slot: Slot, task: asyncio.Task[None]) -> None:
        if self.tasks.get(job_id) is task:
            del self.tasks[job_id]
        slot.release()  # wakes the claim loop if it waited for a slot
        entry = self._claims.get(job_id)
        if entry is not None and entry[1] is slot:  # cancelled before it started
            del self._claims[job_id]
        if not task.cancelled() and task.exception() is not None:
            logger.error("job %s: run_job ended with an error", job_id, exc_info=task.exception())

    async def _housekeeping(self) -> None:
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        await self.heart_beat()  # ARQ's: health check key and cron jobs

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            return True
        return False

    # -- wake-ups, child results, leases --------------------------------------------------------

    async def _listen(self) -> None:
        """Wake-ups on the queue's channel; finished children on this worker's own channel."""
        failures = 0
        own = WORKER_CHANNEL_PREFIX + self.token
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(wake_channel(self.queue_name), own)
                    failures = 0
                    self._wake.set()  # (re)subscribed: look for work that came meanwhile
                    self._child_finished(None)
                    if self._held is None:  # a pool told to retry: redis-py's reads, which do
                        async for message in pubsub.listen():
                            if message["type"] == "message":
                                self._on_message(own, message["channel"], message["data"])
                        continue
                    connection = pubsub.connection
                    assert connection is not None
                    while True:
                        # Straight off the connection: PubSub.listen() adds a health check, a retry
                        # wrapper and a dict to each message, one message per job when idle.
                        reply = await connection.read_response(push_request=True)
                        if isinstance(reply, list) and len(reply) == 3 and reply[0] in _MESSAGE:
                            self._on_message(own, reply[1], reply[2])
            except (RedisError, OSError) as err:
                delay = redis_backoff_s(failures)
                failures += 1
                if not self._refusals.report(err, "idle workers poll the queue instead of waking on enqueue"):
                    logger.debug("wake-up channel lost (%s); resubscribing in %.2f s", err, delay)
                await asyncio.sleep(delay)

    def _on_message(self, own: str, channel: bytes | str, data: bytes | str) -> None:
        if (channel.decode() if isinstance(channel, bytes) else channel) == own:
            self._child_finished(data.decode() if isinstance(data, bytes) else data)
        else:
            self._wake.set()

    def _child_finished(self, job_id: str | None) -> None:
        """Wake the parents waiting for ``job_id`` (all of them when None: a message may be lost)."""
        targets = list(self._child_waiters) if job_id is None else [job_id]
        for target in targets:
            for waiter in self._child_waiters.get(target, []):
                if not waiter.done():
                    waiter.set_result(None)

    def watch_child(self, job_id: str) -> asyncio.Future[None]:
        """A future set when a message says ``job_id`` finished (or the channel was re-subscribed)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._child_waiters.setdefault(job_id, []).append(waiter)

        def forget(_: asyncio.Future[None]) -> None:
            waiters = self._child_waiters.get(job_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._child_waiters.pop(job_id, None)

        waiter.add_done_callback(forget)
        return waiter

    async def _renew_leases(self, registry: WorkerRegistry) -> None:
        interval = self.lease_s / 3
        with contextlib.suppress(RedisError, OSError):
            async with asyncio.timeout(interval):
                await registry.beat(interval * 3)  # at once: a waiter may be asking who is alive
        while True:
            await asyncio.sleep(interval)
            job_ids = list(self.tasks)
            for start in range(0, len(job_ids), 1000):
                chunk = job_ids[start : start + 1000]
                try:
                    async with asyncio.timeout(interval):
                        await self._heartbeat_script(
                            keys=[self.queue_name, leases_key(self.queue_name)],
                            args=[now_ms(), self._lease_ms, self.token, *chunk],
                        )
                except (RedisError, OSError) as err:
                    logger.warning("renewing %d lease(s) failed: %s", len(chunk), str(err) or repr(err))
            with contextlib.suppress(RedisError, OSError):
                async with asyncio.timeout(interval):
                    await registry.beat(interval * 3)
