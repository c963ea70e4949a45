"""Claims: the claim script's rows read defensively, poison entries set aside, and what a claim does in
Redis (lease, retry counter, a batch task's payload rebuilt from its batch)."""

from __future__ import annotations

import json
import logging
import types
from collections.abc import Callable

import fakeredis._socket._base as fakeredis_socket
import pytest
from arq.connections import ArqRedis

from coditect.client.batches import BatchStore
from coditect.client.events import read_events
from coditect.engine.claims import DEAD_LETTERS_MAX, Claim, Poison, dead_letter, parse_rows, set_aside
from coditect.engine.embedded import EmbeddedBackend
from coditect.engine.worker import CoditectWorker
from coditect.keys import DEAD_LETTERS_KEY, job_id_for, leases_key, wake_channel
from coditect.lua import script
from coditect.models import AgentTask
from coditect.settings import Settings
from tests.engine.support import Probe, failure_of, result_of
from tests.support.fake_backend import QUEUE, now_ms, wait_until

# -- parse_rows -----------------------------------------------------------------------------------


def test_parse_rows_makes_claims_of_what_it_can_read() -> None:
    rows = [
        [b"j1", b"{}", 2, b"1700000000000", 1, 3, b"", 1],
        [b"j2", None, 1, b"-inf", 0, None, b"retry counter is unusable", 0],
        [b"j3", b"x", -1, "nan", 0, 0, "bad", 0],
    ]

    claims, poison = parse_rows(rows)

    assert poison == []
    assert claims == [
        Claim("j1", b"{}", 2, 1_700_000_000_000, True, 3, "", budget=True),
        Claim("j2", b"", 1, 0, False, 0, "retry counter is unusable"),
        Claim("j3", b"x", -1, 0, False, 0, "bad"),
    ]


def test_parse_rows_sets_aside_an_id_that_is_not_text() -> None:
    claims, poison = parse_rows(
        [[b"\xff\xfe", b"{}", 1, 0, 0, 0, b"", 0], [b"ok", b"{}", 1, 5, 0, 0, b"", 0]]
    )

    assert [claim.job_id for claim in claims] == ["ok"]
    assert poison == [Poison(b"\xff\xfe", "job id is not UTF-8 text")]


def test_a_dead_letter_names_the_job_and_why() -> None:
    entry = json.loads(dead_letter("j1", "unreadable payload"))

    assert (entry["job_id"], entry["reason"]) == ("j1", "unreadable payload")
    assert abs(entry["at_ms"] - now_ms()) < 5_000


async def test_set_aside_removes_every_trace_of_the_entry_and_records_it(pool: ArqRedis) -> None:
    raw = b"\xff\xfe"
    await pool.zadd(QUEUE, {raw: 1, b"other": 2})
    await pool.zadd(leases_key(QUEUE), {raw: 1})
    await pool.zadd("arq:abort", {raw: 1})
    for prefix in ("arq:job:", "arq:retry:", "arq:in-progress:"):
        await pool.set(prefix.encode() + raw, b"1")
    for i in range(DEAD_LETTERS_MAX):
        await pool.rpush(DEAD_LETTERS_KEY, f"old-{i}")

    await set_aside(pool, QUEUE, [Poison(raw, "job id is not UTF-8 text")])

    assert await pool.zrange(QUEUE, 0, -1) == [b"other"]
    assert await pool.zcard(leases_key(QUEUE)) == 0
    assert await pool.zcard("arq:abort") == 0
    assert await pool.exists(*(p.encode() + raw for p in ("arq:job:", "arq:retry:", "arq:in-progress:"))) == 0
    assert await pool.llen(DEAD_LETTERS_KEY) == DEAD_LETTERS_MAX
    newest = json.loads(await pool.lindex(DEAD_LETTERS_KEY, 0))
    assert (newest["job_id"], newest["reason"]) == ("\\xff\\xfe", "job id is not UTF-8 text")


# -- through a worker -----------------------------------------------------------------------------


async def test_a_queue_entry_that_is_not_text_is_set_aside_and_the_worker_keeps_going(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="coditect.engine.worker")
    await pool.zadd(QUEUE, {b"\xff\xfe": now_ms()})
    await pool.enqueue_job("echo", "good", _job_id="good")
    start_worker()

    assert (await result_of(pool, "good"))["value"] == "good"
    await wait_until(lambda: pool.llen(DEAD_LETTERS_KEY), what="the dead letter")
    assert await pool.zcard(QUEUE) == 0
    assert json.loads(await pool.lindex(DEAD_LETTERS_KEY, 0))["job_id"] == "\\xff\\xfe"
    assert "queue entry b'\\xff\\xfe' set aside in the dead-letter list" in caplog.text


async def test_a_job_whose_retry_counter_is_unusable_fails_without_running(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    await pool.enqueue_job("echo", "x", _job_id="j1")
    await pool.set("arq:retry:j1", "not a number")
    start_worker()

    error = await failure_of(pool, "j1")

    assert error.error_type == "JobExecutionFailed"
    assert error.message.startswith("retry counter arq:retry:j1 is unusable")
    assert probe.calls == []
    (letter,) = [json.loads(entry) for entry in await pool.lrange(DEAD_LETTERS_KEY, 0, -1)]
    assert letter["job_id"] == "j1"
    assert await pool.exists("arq:retry:j1", "arq:job:j1", "arq:in-progress:j1") == 0


async def test_a_batch_task_whose_job_key_was_lost_runs_from_its_batch(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    await store.submit("b1", [AgentTask(id="t1", title="evicted")])
    job_id = job_id_for("b1", "t1")
    await pool.delete(f"arq:job:{job_id}")  # evicted, or lost with Redis's data
    start_worker()

    assert await result_of(pool, job_id) == {"task_id": "t1", "status": "success", "attempts": 1}
    assert probe.calls == [(job_id, 1)]


# -- the claim script -----------------------------------------------------------------------------


def claim_args(now: int, lease_ms: int, want: int, *ids: str, aborts: bool = True) -> list[str | int]:
    return [now, lease_ms, want, "tok", "worker-1", wake_channel(QUEUE), 1000, 60_000, 60_000,
            "1" if aborts else "0", *ids]  # fmt: skip


async def test_a_claim_holds_the_job_by_lease_and_counts_the_try(pool: ArqRedis) -> None:
    await pool.enqueue_job("echo", _job_id="j1")
    await pool.enqueue_job("echo", _job_id="j2", _defer_by=60)
    claim = pool.register_script(script("claim"))
    now = now_ms() + 1

    rows = await claim(keys=[QUEUE, leases_key(QUEUE)], args=claim_args(now, 5000, 10))

    (claims, poison) = parse_rows(rows)
    assert poison == []
    assert [(c.job_id, c.job_try, c.aborted, c.problem) for c in claims] == [("j1", 1, False, "")]
    assert await pool.zscore(QUEUE, "j1") == now + 5000
    assert await pool.zscore(leases_key(QUEUE), "j1") == now + 5000
    assert await pool.get("arq:in-progress:j1") == b"tok"
    assert await pool.get("arq:retry:j1") == b"1"
    assert await claim(keys=[QUEUE, leases_key(QUEUE)], args=claim_args(now, 5000, 10)) == [], "held"


async def test_a_claim_takes_an_abort_only_when_aborts_are_allowed(pool: ArqRedis) -> None:
    for job_id in ("j1", "j2"):
        await pool.enqueue_job("echo", _job_id=job_id)
        await pool.zadd("arq:abort", {job_id: 1})
    claim = pool.register_script(script("claim"))
    now = now_ms() + 1

    (row1,) = await claim(keys=[QUEUE, leases_key(QUEUE)], args=claim_args(now, 5000, 1, "j1"))
    (row2,) = await claim(keys=[QUEUE, leases_key(QUEUE)], args=claim_args(now, 5000, 1, "j2", aborts=False))

    assert (row1[4], row2[4]) == (1, 0)
    assert await pool.zrange("arq:abort", 0, -1) == [b"j2"]


async def test_the_embedded_backend_keeps_the_in_progress_key_for_the_whole_lease(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fakeredis's PSETEX stores whole seconds (int(now + ms / 1000)): with the server's clock frozen
    # half-way through a second, a lease written that way would show 500 ms instead of 1000.
    monkeypatch.setattr(fakeredis_socket, "time", types.SimpleNamespace(time=lambda: 1_700_000_000.5))
    embedded = EmbeddedBackend(settings.model_copy(update={"lease_s": 1.0}))
    pool = embedded.pool()
    try:
        await pool.set("arq:job:j1", b"{}")
        await pool.zadd(settings.queue_name, {"j1": 0})
        claim = pool.register_script(script("claim"))
        await claim(
            keys=[settings.queue_name, leases_key(settings.queue_name)], args=claim_args(now_ms(), 1000, 1)
        )

        assert await pool.pttl("arq:in-progress:j1") == 1000
    finally:
        await pool.aclose(close_connection_pool=True)


async def test_a_claim_call_takes_several_batches_steps_over_held_jobs_and_counts_each_start_once(
    pool: ArqRedis,
) -> None:
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    await store.submit("b1", [AgentTask(id=f"t{i}", title="x") for i in range(3)])
    await store.submit("b2", [AgentTask(id=f"t{i}", title="x") for i in range(2)], fields={"budget_usd": 1})
    await pool.set(f"arq:in-progress:{job_id_for('b1', 't1')}", "other")  # held by another worker
    await pool.zadd("arq:abort", {job_id_for("b2", "t0"): 1})
    claim = pool.register_script(script("claim"))
    keys = [QUEUE, leases_key(QUEUE)]
    now = now_ms() + 1

    claims, _ = parse_rows(await claim(keys=keys, args=claim_args(now, 5000, 3)))
    more, _ = parse_rows(await claim(keys=keys, args=claim_args(now, 5000, 10)))

    taken = [job_id_for("b1", "t0"), job_id_for("b1", "t2"), job_id_for("b2", "t0"), job_id_for("b2", "t1")]
    assert [c.job_id for c in claims + more] == taken
    assert [(c.budget, c.aborted, c.depth) for c in claims + more] == [
        (False, False, 0), (False, False, 0), (True, True, 0), (True, False, 0),
    ]  # fmt: skip
    assert all(c.payload and c.job_try == 1 for c in claims + more)
    for job_id in taken:
        assert await pool.zscore(QUEUE, job_id) == now + 5000
        assert await pool.zscore(leases_key(QUEUE), job_id) == now + 5000
    assert await pool.zscore(QUEUE, job_id_for("b1", "t1")) < now
    assert await pool.exists("arq:abort") == 0
    assert [await pool.hget(f"coditect:batch:{b}", "n_running") for b in ("b1", "b2")] == [b"2", b"2"]
    assert await pool.hgetall("coditect:batch:b1:state") == {b"t0": b"r", b"t1": b"q", b"t2": b"r"}
    events = await read_events(pool, None, "0-0")
    assert [(e.batch_id, e.task_id) for e in events if e.type == "task.started"] == [
        ("b1", "t0"), ("b1", "t2"), ("b2", "t0"), ("b2", "t1"),
    ]  # fmt: skip

    # A lease that ran out: the task is running already, and its start is not counted again.
    lost = job_id_for("b1", "t0")
    await pool.delete(f"arq:in-progress:{lost}")
    await pool.zadd(QUEUE, {lost: now - 1})
    await pool.zadd(leases_key(QUEUE), {lost: now - 1})
    (again,) = parse_rows(await claim(keys=keys, args=claim_args(now, 5000, 10)))[0]
    assert (again.job_id, again.job_try) == (lost, 2)
    assert await pool.hget("coditect:batch:b1", "n_running") == b"2"


async def test_a_claim_of_named_jobs_takes_each_once(pool: ArqRedis) -> None:
    await pool.enqueue_job("echo", _job_id="j1")
    await pool.enqueue_job("echo", _job_id="j2")
    claim = pool.register_script(script("claim"))

    rows = await claim(
        keys=[QUEUE, leases_key(QUEUE)], args=claim_args(now_ms() + 1, 5000, 10, "j1", "j1", "nope", "j2")
    )

    assert [(row[0], row[2]) for row in rows] == [(b"j1", 1), (b"j2", 1)]
    assert await pool.get("arq:retry:j1") == b"1"
