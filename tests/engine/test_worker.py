"""CoditectWorker's loop on fakeredis: claims, leases and heartbeats, wake-ups, burst mode, ARQ's
``_poll_iteration``/``start_jobs``, Redis errors, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import arq.utils
import pytest
from arq.connections import ArqRedis
from arq.worker import func
from redis.exceptions import ConnectionError as RedisConnectionError

from coditect.client.batches import BatchStore
from coditect.engine.worker import CoditectWorker
from coditect.keys import WORKER_CHANNEL_PREFIX, job_id_for, leases_key, wake_channel
from coditect.lua import script
from coditect.models import AgentTask
from coditect.serialization import job_deserializer, job_serializer
from tests.engine.support import FUNCTIONS, Probe, echo, result_info, result_of, true
from tests.support.fake_backend import QUEUE, FakeBackend, now_ms, wait_until

# -- claim ----------------------------------------------------------------------------------------


async def test_a_batch_of_jobs_runs_at_most_max_jobs_at_once_with_arq_results(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    job_ids = [f"j{i}" for i in range(12)]
    for job_id in job_ids:
        await pool.enqueue_job("hold", _job_id=job_id)
    worker = start_worker(max_jobs=4)

    await wait_until(lambda: true(probe.running == 4), what="4 jobs running")
    assert len(probe.calls) == 4, "no job beyond max_jobs was started"
    assert await pool.exists(*(f"arq:in-progress:{j}" for j in job_ids)) == 4
    probe.release.set()

    assert [await result_of(pool, job_id) for job_id in job_ids] == ["released"] * 12
    assert probe.max_running == 4
    info = await result_info(pool, "j0")
    assert (info.success, info.function, info.job_try, info.job_id, info.queue_name) == (
        True, "hold", 1, "j0", QUEUE,
    )  # fmt: skip
    assert info.start_time <= info.finish_time
    assert await pool.zcard(QUEUE) == 0
    assert await pool.keys("arq:in-progress:*") == []
    assert await pool.keys("arq:job:*") == []
    assert worker.jobs_complete == 12


async def test_a_deferred_job_is_not_claimed_before_its_score(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    await pool.enqueue_job("echo", "later", _job_id="later", _defer_by=0.3)
    deferred_score = await pool.zscore(QUEUE, "later")
    await pool.enqueue_job("echo", "now", _job_id="now")

    assert (await result_of(pool, "now"))["value"] == "now"
    result = await result_of(pool, "later")

    assert result["score"] == deferred_score
    assert probe.starts_ms["later"][0] >= deferred_score - 1  # ARQ's scores are rounded, not floored
    assert probe.starts_ms["now"][0] < deferred_score


async def test_a_job_held_by_another_workers_in_progress_key_is_skipped(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    await pool.set("arq:in-progress:held", "other-worker", px=60_000)
    await pool.enqueue_job("echo", "held", _job_id="held")
    await pool.enqueue_job("echo", "free", _job_id="free")
    start_worker(max_jobs=10)

    # Both are due, so the one claim call that started "free" saw "held" too and left it.
    assert (await result_of(pool, "free"))["value"] == "free"
    assert ("held", 1) not in probe.calls
    assert await pool.get("arq:in-progress:held") == b"other-worker"
    assert await pool.get("arq:retry:held") is None, "a skipped job does not use up a try"

    await pool.delete("arq:in-progress:held")
    await pool.publish(wake_channel(QUEUE), 1)
    assert (await result_of(pool, "held"))["try"] == 1


async def test_due_jobs_held_by_others_do_not_starve_free_jobs_behind_them(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker]
) -> None:
    await pool.set("arq:in-progress:held", "other-worker", px=60_000)
    await pool.enqueue_job("echo", "held", _job_id="held")
    await pool.zadd(QUEUE, {"held": 1})  # first in the queue
    await pool.enqueue_job("echo", "free", _job_id="free")
    start_worker(max_jobs=1)

    assert (await result_of(pool, "free", timeout_s=1.0))["value"] == "free"


def idle_worker(backend: FakeBackend, probe: Probe, **options: Any) -> CoditectWorker:
    """A worker that is built but not running: the test drives it one round at a time."""
    return CoditectWorker(
        FUNCTIONS,
        redis_pool=backend.pool(track=False),
        queue_name=QUEUE,
        handle_signals=False,
        ctx={"probe": probe},
        **options,
    )


async def test_a_job_an_arq_client_enqueues_is_due_to_a_claim_in_the_same_millisecond(
    pool: ArqRedis, probe: Probe, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen = 1_700_000_000.0006  # ARQ rounds this up to ...001 ms; a floor would say ...000
    monkeypatch.setattr(time, "time", lambda: frozen)
    monkeypatch.setattr(arq.utils, "time", lambda: frozen)
    await pool.enqueue_job("echo", "now", _job_id="j1")
    worker = idle_worker(backend, probe)
    try:
        await worker._poll_iteration()

        # Claimed by that round (the job itself may have ended by now: ask its result, not the tasks).
        assert (await result_of(pool, "j1"))["value"] == "now"
        assert probe.calls == [("j1", 1)]
    finally:
        await worker.close()


async def test_a_job_put_back_is_claimed_again_while_its_previous_run_ends_and_each_frees_its_slot(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    async def after_job_end(ctx: dict[str, Any]) -> None:
        if ctx["job_try"] == 1:  # the first run ends only once the second has started
            await probe.wait_started("j1:try2")

    async def on_job_start(ctx: dict[str, Any]) -> None:
        if ctx["job_try"] == 2:
            probe.event("j1:try2").set()

    worker = start_worker(after_job_end=after_job_end, on_job_start=on_job_start, max_jobs=4)
    await pool.enqueue_job("retry_job_once", _job_id="j1")

    assert await result_of(pool, "j1") == {"try": 2}
    await wait_until(lambda: true(not worker.tasks), what="both runs to end")
    assert probe.calls == [("j1", 1), ("j1", 2)]
    assert (worker._slots.busy, worker._claims) == (0, {})


# -- ARQ's rounds: _poll_iteration, start_jobs, burst --------------------------------------------


async def test_one_poll_iteration_starts_at_most_queue_read_limit_jobs(
    pool: ArqRedis, probe: Probe, backend: FakeBackend
) -> None:
    for i in range(5):
        await pool.enqueue_job("echo", i, _job_id=f"j{i}")
    worker = idle_worker(backend, probe, queue_read_limit=2)
    try:
        await worker._poll_iteration()

        assert [(await result_of(pool, f"j{i}"))["value"] for i in (0, 1)] == [0, 1]
        assert await pool.zcard(QUEUE) == 3, "the other three wait for the next round"
        assert sorted(job_id for job_id, _ in probe.calls) == ["j0", "j1"]
        assert await pool.exists(worker.health_check_key) == 1, "a round ends with ARQ's heartbeat"
    finally:
        await worker.close()


async def test_start_jobs_claims_only_the_given_due_jobs(
    pool: ArqRedis, probe: Probe, backend: FakeBackend
) -> None:
    for job_id in ("a", "b", "c"):
        await pool.enqueue_job("echo", job_id, _job_id=job_id)
    await pool.enqueue_job("echo", "later", _job_id="later", _defer_by=60)
    worker = idle_worker(backend, probe)
    try:
        await worker.start_jobs([b"c", b"a", b"later", b"unknown"])

        assert sorted(worker.tasks) == ["a", "c"]
        assert (await result_of(pool, "c"))["value"] == "c"
        assert (await result_of(pool, "a"))["value"] == "a"
        assert await pool.zscore(QUEUE, "b") is not None
        assert await pool.exists("arq:in-progress:later") == 0
    finally:
        await worker.close()


async def test_a_burst_worker_runs_the_queue_empty_then_stops(
    pool: ArqRedis, backend: FakeBackend, start_worker: Callable[..., CoditectWorker]
) -> None:
    for i in range(3):
        await pool.enqueue_job("echo", i, _job_id=f"j{i}")
    worker = start_worker(burst=True, max_jobs=2)

    async with asyncio.timeout(5):
        await backend.run_task(worker)

    assert worker.jobs_complete == 3
    assert [(await result_of(pool, f"j{i}"))["value"] for i in range(3)] == [0, 1, 2]


@pytest.mark.parametrize("max_burst_jobs", [0, 1, 2])
async def test_max_burst_jobs_caps_the_jobs_a_burst_worker_runs(
    pool: ArqRedis,
    probe: Probe,
    backend: FakeBackend,
    start_worker: Callable[..., CoditectWorker],
    max_burst_jobs: int,
) -> None:
    for i in range(5):
        await pool.enqueue_job("echo", i, _job_id=f"j{i}")
    worker = start_worker(burst=True, max_burst_jobs=max_burst_jobs)

    async with asyncio.timeout(5):
        await backend.run_task(worker)

    assert len(probe.calls) == max_burst_jobs
    assert worker.jobs_complete == max_burst_jobs
    assert await pool.zcard(QUEUE) == 5 - max_burst_jobs
    assert len(await pool.keys("arq:result:*")) == max_burst_jobs


async def test_a_worker_that_may_not_pick_jobs_claims_none(
    pool: ArqRedis, probe: Probe, backend: FakeBackend
) -> None:
    await pool.enqueue_job("echo", 1, _job_id="j1")
    worker = idle_worker(backend, probe)
    worker.allow_pick_jobs = False
    try:
        await worker._poll_iteration()
        await worker.start_jobs([b"j1"])

        assert worker.tasks == {}
        assert await pool.exists("arq:in-progress:j1") == 0
    finally:
        await worker.close()


# -- lease and heartbeat --------------------------------------------------------------------------


async def test_a_claim_moves_the_score_to_the_lease_deadline_and_stores_the_worker_token(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    worker = start_worker(lease_s=5.0)
    before_ms = now_ms()
    await pool.enqueue_job("hold", _job_id="j1")
    await probe.wait_started("j1")
    after_ms = now_ms()

    score = await pool.zscore(QUEUE, "j1")
    token = await pool.get("arq:in-progress:j1")
    ttl_ms = await pool.pttl("arq:in-progress:j1")

    assert before_ms + 5000 <= score <= after_ms + 5000
    assert await pool.zscore(leases_key(QUEUE), "j1") == score
    assert token is not None
    assert token.decode() == worker.token
    assert re.fullmatch(r".+:\d+:[0-9a-f]{8}", token.decode())
    assert 4000 < ttl_ms <= 5000
    assert await pool.get("arq:retry:j1") == b"1"
    probe.release.set()
    assert await result_of(pool, "j1") == "released"
    assert await pool.zscore(leases_key(QUEUE), "j1") is None


async def test_the_heartbeat_renews_own_leases_and_leaves_a_foreign_one_alone(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    worker = start_worker(lease_s=0.3)  # heartbeat every 0.1 s
    await pool.enqueue_job("hold", _job_id="mine")
    await pool.enqueue_job("hold", _job_id="taken")
    await probe.wait_started("mine", "taken")

    await pool.set("arq:in-progress:taken", "someone-else", px=60_000)
    taken_score = await pool.zscore(QUEUE, "taken")
    first = await pool.zscore(QUEUE, "mine")

    async def renewed_after(score: float) -> float | None:
        current = await pool.zscore(QUEUE, "mine")
        return current if current is not None and current > score else None

    second = await wait_until(lambda: renewed_after(first), what="a heartbeat")
    await wait_until(lambda: renewed_after(second), what="another heartbeat")

    assert await pool.zscore(QUEUE, "taken") == taken_score
    assert await pool.get("arq:in-progress:taken") == b"someone-else"
    assert await pool.get("arq:in-progress:mine") == worker.token.encode()
    assert 0 < await pool.pttl("arq:in-progress:mine") <= 300
    assert ("mine", 2) not in probe.calls, "a renewed job is not claimed again"
    probe.release.set()
    assert await result_of(pool, "mine") == "released"


async def test_a_dead_workers_job_runs_again_after_its_lease_ahead_of_later_jobs(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    await pool.enqueue_job("echo", "x", _job_id="j1")
    claim = pool.register_script(script("claim"))
    claimed_ms = max(now_ms(), int(await pool.zscore(QUEUE, "j1")))  # ARQ rounds its timestamps
    args = [claimed_ms, 200, 10, "dead-token", "dead-worker", wake_channel(QUEUE), 1000, 60_000, 60_000, "1"]
    ((job_id, payload, job_try, _, aborted, _, problem, _),) = await claim(
        keys=[QUEUE, leases_key(QUEUE)], args=args
    )
    assert (job_id, job_try, aborted, problem) == (b"j1", 1, 0, b"")
    assert job_deserializer(payload)["f"] == "echo"
    await pool.enqueue_job("echo", "y", _job_id="j2")  # due before j1's lease deadline, its new score
    await wait_until(lambda: true(now_ms() > claimed_ms + 200), what="the lease to run out")

    start_worker(max_jobs=1)  # the dead worker never finishes: a live one runs j1 once the lease ends

    result = await result_of(pool, "j1")
    assert result["try"] == 2
    assert (await result_info(pool, "j1")).job_try == 2
    assert probe.starts_ms["j1"][0] >= claimed_ms + 200
    assert (await result_of(pool, "j2"))["try"] == 1
    assert [call for call, _ in probe.calls] == ["j1", "j2"], "the lost lease first, then the queue"


# -- wake-ups and child results -------------------------------------------------------------------


async def test_an_idle_worker_wakes_on_a_submitted_batch_long_before_its_poll_delay(
    pool: ArqRedis, probe: Probe, backend: FakeBackend
) -> None:
    worker = backend.worker(FUNCTIONS, ctx={"probe": probe}, poll_delay=5)
    await backend.listening(1)
    await wait_until(lambda: pool.exists(worker.health_check_key), what="the first loop iteration")
    await wait_until(lambda: true(not worker._wake.is_set()), what="the worker to go idle")
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)

    submitted = await store.submit("b1", [AgentTask(id="t1", title="wake up")])
    result = await result_of(pool, job_id_for("b1", "t1"), timeout_s=1.0)

    assert (submitted.created, submitted.added) == (True, 1)
    assert result == {"task_id": "t1", "status": "success", "attempts": 1}
    assert probe.calls == [(job_id_for("b1", "t1"), 1)]
    summary = await store.summary("b1")
    assert summary is not None
    assert summary.counts["success"] == 1
    assert summary.finished


async def test_a_lost_wake_up_channel_is_subscribed_again(
    pool: ArqRedis,
    backend: FakeBackend,
    start_worker: Callable[..., CoditectWorker],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="coditect.engine.worker")
    worker = start_worker(poll_delay=5)  # the engine starts at the next await
    real_pubsub = worker.pool.pubsub
    refusals: list[int] = []

    def pubsub_once_refused(**kwargs: Any) -> Any:
        if not refusals:
            refusals.append(1)
            raise RedisConnectionError("pub/sub refused")
        return real_pubsub(**kwargs)

    monkeypatch.setattr(worker.pool, "pubsub", pubsub_once_refused)
    await backend.listening(1)
    await wait_until(lambda: pool.exists(worker.health_check_key), what="the first loop iteration")
    await wait_until(lambda: true(not worker._wake.is_set()), what="the worker to go idle")

    await pool.enqueue_job("echo", "after the outage", _job_id="j1")
    await pool.publish(wake_channel(QUEUE), 1)

    assert (await result_of(pool, "j1", timeout_s=1.0))["value"] == "after the outage", "woken, not polled"
    assert refusals == [1]
    assert "wake-up channel lost (pub/sub refused); resubscribing" in caplog.text


async def test_a_message_on_the_workers_own_channel_wakes_who_watches_that_child(
    pool: ArqRedis, backend: FakeBackend, start_worker: Callable[..., CoditectWorker]
) -> None:
    worker = start_worker()
    await backend.listening(1)
    child = worker.watch_child("coditect:b1:child")
    other = worker.watch_child("coditect:b1:other")

    await pool.publish(WORKER_CHANNEL_PREFIX + worker.token, "coditect:b1:child")

    async with asyncio.timeout(5):
        await child
    assert not other.done()
    other.cancel()
    await asyncio.sleep(0)  # the done callbacks run on the next turn of the loop
    assert worker._child_waiters == {}


# -- Redis errors ---------------------------------------------------------------------------------


async def test_a_redis_error_in_the_claim_loop_is_retried(
    pool: ArqRedis,
    backend: FakeBackend,
    start_worker: Callable[..., CoditectWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = start_worker()
    await backend.listening(1)
    real_claim = worker._claimer._claim
    failures: list[int] = []

    async def claim_once_failing(**kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise RedisConnectionError("connection reset by peer")
        return await real_claim(**kwargs)

    worker._claimer._claim = claim_once_failing  # type: ignore[assignment]
    await pool.enqueue_job("echo", "x", _job_id="j1")

    assert (await result_of(pool, "j1"))["value"] == "x"
    assert failures == [1]
    assert "redis error in worker loop (connection reset by peer)" in caplog.text


async def test_a_failed_heartbeat_is_logged_and_the_job_still_finishes(
    pool: ArqRedis,
    probe: Probe,
    start_worker: Callable[..., CoditectWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = start_worker(lease_s=0.3)
    await pool.enqueue_job("hold", _job_id="j1")
    await probe.wait_started("j1")

    async def broken_heartbeat(**_: Any) -> int:
        raise RedisConnectionError("no route to host")

    worker._heartbeat_script = broken_heartbeat  # type: ignore[assignment]
    caplog.set_level(logging.WARNING, logger="coditect.engine.worker")
    await wait_until(lambda: true("renewing 1 lease(s) failed: no route to host" in caplog.text))
    probe.release.set()

    assert await result_of(pool, "j1") == "released"


# -- serializer -----------------------------------------------------------------------------------


async def test_a_worker_built_without_serializers_writes_json_results(
    pool: ArqRedis, probe: Probe, backend: FakeBackend
) -> None:
    worker = CoditectWorker(
        [func(echo, name="echo")],
        redis_pool=backend.pool(track=False),
        queue_name=QUEUE,
        handle_signals=False,
        poll_delay=0.02,
        ctx={"probe": probe},
    )
    backend.start(worker)
    await pool.enqueue_job("echo", "plain", _job_id="j1")

    assert (await result_of(pool, "j1"))["value"] == "plain"
    record = json.loads(await pool.get("arq:result:j1"))
    assert (record["f"], record["s"], record["r"]["value"]) == ("echo", True, "plain")
    assert (worker.job_serializer, worker.job_deserializer) == (job_serializer, job_deserializer)


# -- shutdown -------------------------------------------------------------------------------------


async def test_shutdown_puts_a_running_job_back_and_another_worker_finishes_it(
    pool: ArqRedis, probe: Probe, backend: FakeBackend, start_worker: Callable[..., CoditectWorker]
) -> None:
    first = start_worker()
    await pool.enqueue_job("hold_first_try", _job_id="j1")
    await probe.wait_started("j1")

    first.handle_sig(signal.SIGTERM)
    with pytest.raises(asyncio.CancelledError):
        await backend.run_task(first)

    score = await pool.zscore(QUEUE, "j1")
    assert score is not None
    assert score <= now_ms(), "back in the queue, due now"
    assert await pool.exists("arq:in-progress:j1", "arq:result:j1") == 0
    assert await pool.zscore(leases_key(QUEUE), "j1") is None
    assert first.jobs_retried == 1

    start_worker()
    assert await result_of(pool, "j1") == {"try": 2}
    assert probe.calls == [("j1", 1), ("j1", 2)]


async def test_close_waits_for_the_requeue_to_be_written(
    pool: ArqRedis, probe: Probe, backend: FakeBackend, start_worker: Callable[..., CoditectWorker]
) -> None:
    worker = start_worker()
    await pool.enqueue_job("hold_first_try", _job_id="j1")
    await probe.wait_started("j1")

    await backend.stop_worker(worker)

    assert await pool.zscore(QUEUE, "j1") is not None
    assert await pool.exists("arq:in-progress:j1") == 0
    assert await pool.exists(worker.health_check_key) == 0
    await worker.close()  # closing again is a no-op
