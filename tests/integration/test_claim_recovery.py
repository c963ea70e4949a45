"""A claim whose reply was lost: the claim script ran (its jobs are held by the worker's token), and
the reply never came. The worker asks for that claim again and runs its jobs, instead of leaving
them held by nobody until their lease runs out and another claim takes them (a second try each).

First end to end, with a reply really lost on the way (a TCP proxy) and a worker process; then
``Claimer``, ``claim.lua`` and ``reclaim.lua`` one case at a time on the suite's redis-server."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from arq.connections import ArqRedis

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.clock import now_ms
from coditect.engine.claimer import Claimer
from coditect.keys import CLAIM_KEY_PREFIX, leases_key
from coditect.lua import script
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

StartWorkers = Callable[..., Any]
LEASE_S = 6.0
QUEUE_NAME = "coditect:queue"


@pytest.mark.timeout(60)
async def test_a_claim_whose_reply_was_lost_is_recovered_before_its_lease_runs_out(
    real_settings: Settings, redis_server: RedisServer, start_workers: StartWorkers
) -> None:
    claim_sha = hashlib.sha1(script("claim").encode()).hexdigest().encode()
    tasks = [AgentTask(id=f"t{i}", title=f"task {i}") for i in range(4)]
    async with TcpProxy(redis_server.port) as proxy, ProjectOrchestrator(real_settings) as orch:
        # It claims only when woken (a poll would claim first, and lose an empty claim's reply).
        (worker,) = await start_workers(
            1, CODITECT_REDIS_URL=proxy.url, CODITECT_LEASE_S=str(LEASE_S), CODITECT_POLL_INTERVAL_S="5"
        )
        worker.signal(signal.SIGSTOP)  # the wake-up waits in its socket; the tasks wait in the queue
        try:
            await orch.submit(tasks, batch_id="lost-reply")  # straight to Redis, not through the proxy
            # Loaded already: the reply lost is the claim's, not a NOSCRIPT asking to load it.
            assert await orch.redis.script_load(script("claim")) == claim_sha.decode()
            proxy.lose_replies_to(claim_sha)
        finally:
            worker.signal(signal.SIGCONT)
        resumed = time.monotonic()
        results = await asyncio.wait_for(orch.wait("lost-reply"), 40)
        elapsed = time.monotonic() - resumed

    assert proxy.replies_lost == 1
    assert [(r.task_id, r.status, r.attempts) for r in results] == [
        (task.id, ExecutionStatus.SUCCESS, 1) for task in tasks
    ]
    log = "\n".join(worker.lines)
    assert "its reply was lost; 4 job(s) it claimed recovered" in log, log
    assert elapsed < LEASE_S, elapsed  # recovered after a third of a lease, not after the lease


# -- one case at a time -----------------------------------------------------------------------

LEASE_MS = 3000


def claim_args(token: str = "tok", want: int = 10) -> list[object]:
    return [now_ms(), LEASE_MS, want, token, "worker-1", QUEUE_NAME + ":wake", 100, 60_000, 60_000, "1"]


@pytest.fixture
async def pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    client = ArqRedis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def queued(pool: ArqRedis) -> list[str]:
    ids = ["j1", "j2", "j3"]
    await pool.zadd(QUEUE_NAME, {job_id: i for i, job_id in enumerate(ids)})
    for job_id in ids:
        await pool.set(f"arq:job:{job_id}", f"payload-{job_id}")
    await pool.set("arq:retry:j3", "many")  # a row with a problem is recovered with it
    return ids


async def test_a_lost_claim_is_given_again_with_its_leases_renewed(pool: ArqRedis, queued: list[str]) -> None:
    claimer = Claimer(pool, queue_name=QUEUE_NAME, token="tok", lease_ms=LEASE_MS)
    first = await claimer.claim(claim_args())
    await pool.pexpire("arq:in-progress:j1", 100)  # time has passed since the claim
    claimer._unanswered = 1  # as if its reply had never come

    again = await claimer.claim(claim_args())

    assert again == first
    assert [row[0] for row in again] == [b"j1", b"j2", b"j3"]
    assert again[2][2:] == [0, b"2", 0, 0, again[2][6], 0]
    assert again[2][6].startswith(b"retry counter arq:retry:j3 is unusable")
    assert await pool.pttl("arq:in-progress:j1") > 2000
    assert (await pool.zscore(leases_key(QUEUE_NAME), "j1") or 0) > now_ms() + 2000
    assert await claimer.claim(claim_args()) == []  # answered: nothing lost any more, nothing queued


async def test_a_lost_claim_gives_only_the_jobs_this_worker_still_holds(
    pool: ArqRedis, queued: list[str]
) -> None:
    claimer = Claimer(pool, queue_name=QUEUE_NAME, token="tok", lease_ms=LEASE_MS)
    await claimer.claim(claim_args(want=2))
    await pool.set("arq:in-progress:j2", "another-worker")  # its lease ran out and someone took it
    claimer._unanswered = 1

    again = await claimer.claim(claim_args())

    assert [row[0] for row in again] == [b"j1"]


async def test_a_claim_that_never_ran_or_claimed_nothing_gives_nothing_back(
    pool: ArqRedis, queued: list[str]
) -> None:
    claimer = Claimer(pool, queue_name=QUEUE_NAME, token="tok", lease_ms=LEASE_MS)
    await claimer.claim(claim_args(want=1))  # claim 1 takes j1 and is remembered
    assert await pool.lrange(CLAIM_KEY_PREFIX + "tok", 0, 0) == [b"1"]
    claimer._sequence, claimer._unanswered = 2, 2  # claim 2's reply was lost: it never ran

    rows = await claimer.claim(claim_args(want=1))

    assert [row[0] for row in rows] == [b"j2"]  # a new claim (3), not claim 1's jobs again
    assert await pool.lrange(CLAIM_KEY_PREFIX + "tok", 0, 0) == [b"3"]
    assert 0 < await pool.pttl(CLAIM_KEY_PREFIX + "tok") <= LEASE_MS
