"""Claims that survive a lost reply (``coditect.engine.claimer``, ``claim.lua``, ``reclaim.lua``) on
fakeredis; with a reply really lost on the way, through a TCP proxy and a worker process:
``tests/integration/test_claim_recovery.py``."""

from __future__ import annotations

import pytest
from arq.connections import ArqRedis

from coditect.clock import now_ms
from coditect.engine.claimer import Claimer
from coditect.keys import CLAIM_KEY_PREFIX, leases_key
from tests.support.fake_backend import QUEUE

LEASE_MS = 3000


def claim_args(token: str = "tok", want: int = 10) -> list[object]:
    return [now_ms(), LEASE_MS, want, token, "worker-1", QUEUE + ":wake", 100, 60_000, 60_000, "1"]


@pytest.fixture
async def queued(pool: ArqRedis) -> list[str]:
    ids = ["j1", "j2", "j3"]
    await pool.zadd(QUEUE, {job_id: i for i, job_id in enumerate(ids)})
    for job_id in ids:
        await pool.set(f"arq:job:{job_id}", f"payload-{job_id}")
    await pool.set("arq:retry:j3", "many")  # a row with a problem is recovered with it
    return ids


async def test_a_lost_claim_is_given_again_with_its_leases_renewed(pool: ArqRedis, queued: list[str]) -> None:
    claimer = Claimer(pool, queue_name=QUEUE, token="tok", lease_ms=LEASE_MS)
    first = await claimer.claim(claim_args())
    await pool.pexpire("arq:in-progress:j1", 100)  # time has passed since the claim
    claimer._unanswered = 1  # as if its reply had never come

    again = await claimer.claim(claim_args())

    assert again == first
    assert [row[0] for row in again] == [b"j1", b"j2", b"j3"]
    assert again[2][2:] == [0, b"2", 0, 0, again[2][6]]
    assert again[2][6].startswith(b"retry counter arq:retry:j3 is unusable")
    assert await pool.pttl("arq:in-progress:j1") > 2000
    assert (await pool.zscore(leases_key(QUEUE), "j1") or 0) > now_ms() + 2000
    assert await claimer.claim(claim_args()) == []  # answered: nothing lost any more, nothing queued


async def test_a_lost_claim_gives_only_the_jobs_this_worker_still_holds(
    pool: ArqRedis, queued: list[str]
) -> None:
    claimer = Claimer(pool, queue_name=QUEUE, token="tok", lease_ms=LEASE_MS)
    await claimer.claim(claim_args(want=2))
    await pool.set("arq:in-progress:j2", "another-worker")  # its lease ran out and someone took it
    claimer._unanswered = 1

    again = await claimer.claim(claim_args())

    assert [row[0] for row in again] == [b"j1"]


async def test_a_claim_that_never_ran_or_claimed_nothing_gives_nothing_back(
    pool: ArqRedis, queued: list[str]
) -> None:
    claimer = Claimer(pool, queue_name=QUEUE, token="tok", lease_ms=LEASE_MS)
    await claimer.claim(claim_args(want=1))  # claim 1 takes j1 and is remembered
    assert await pool.lrange(CLAIM_KEY_PREFIX + "tok", 0, 0) == [b"1"]
    claimer._sequence, claimer._unanswered = 2, 2  # claim 2's reply was lost: it never ran

    rows = await claimer.claim(claim_args(want=1))

    assert [row[0] for row in rows] == [b"j2"]  # a new claim (3), not claim 1's jobs again
    assert await pool.lrange(CLAIM_KEY_PREFIX + "tok", 0, 0) == [b"3"]
    assert 0 < await pool.pttl(CLAIM_KEY_PREFIX + "tok") <= LEASE_MS
