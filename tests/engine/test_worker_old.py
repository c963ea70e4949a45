"""The CoditectWorker engine on fakeredis: claim, lease, heartbeat, retry, abort, shutdown, wake-up."""

from __future__ import annotations

import asyncio
import logging
import pickle
import re
import signal
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arq.worker
import fakeredis._socket._base as fakeredis_socket
import pytest
from arq.connections import ArqRedis
from arq.jobs import Job, JobResult
from arq.worker import Retry, RetryJob, Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError

from coditect.client.batches import BatchStore, result_from_arq
from coditect.engine.embedded import EmbeddedBackend
from coditect.engine.flusher import FinishRecord, ResultFlusher
from coditect.engine.worker import CoditectWorker, adopt, calling_worker
from coditect.jobs import EMBEDDED_KEY, JOB_NAME, SETTINGS_KEY, startup, worker_options
from coditect.keys import done_key, job_id_for, leases_key, wake_channel
from coditect.lua import script
from coditect.models import AgentTask, ExecutionStatus
from coditect.serialization import RemoteJobError, job_deserializer, job_serializer
from coditect.settings import Settings
from tests.support.fake_backend import QUEUE, FakeBackend, now_ms, wait_until

# -- job functions that report to the test through ctx["probe"] -----------------------------------


@dataclass
class Probe:
    calls: list[tuple[str, int]] = field(default_factory=list)
    starts_ms: dict[str, list[int]] = field(default_factory=dict)
    started: dict[str, asyncio.Event] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    max_running: int = 0
    retried_at_ms: int = 0

    def record(self, ctx: dict[str, Any]) -> None:
        job_id = ctx["job_id"]
        self.calls.append((job_id, ctx["job_try"]))
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


async def recording_task_job(ctx: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """Registered as coditect's job name, so that BatchStore.enqueue reaches it."""
    ctx["probe"].record(ctx)
    return {"task_id": task["id"], "status": "success"}


FUNCTIONS = [
    func(recording_task_job, name=JOB_NAME),
    func(echo, name="echo"),
    func(hold, name="hold"),
    func(hold, name="slow", timeout=0.1),
    func(hold_first_try, name="hold_first_try"),
    func(retry_once, name="retry_once"),
    func(always_retry, name="always_retry"),
    func(always_retry, name="retry_at_most_once", max_tries=1),
    func(retry_job_once, name="retry_job_once"),
    func(echo, name="echo_forever", keep_result_forever=True),
]


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def start_worker(backend: FakeBackend, probe: Probe) -> Callable[..., CoditectWorker]:
    def start(**options: Any) -> CoditectWorker:
        return backend.worker(FUNCTIONS, ctx={"probe": probe}, **options)

    return start


def arq_job(pool: ArqRedis, job_id: str) -> Job:
    return Job(job_id, pool, _queue_name=QUEUE, _deserializer=job_deserializer)


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


# -- claim ----------------------------------------------------------------------------------------


async def test_a_batch_of_jobs_runs_at_most_max_jobs_at_once_with_arq_results(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    job_ids = [f"j{i}" for i in range(12)]
    for job_id in job_ids:
        await pool.enqueue_job("hold", _job_id=job_id)
    worker = start_worker(max_jobs=4)

    await wait_until(lambda: _true(probe.running == 4), what="4 jobs running")
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
    assert probe.starts_ms["later"][0] >= deferred_score
    assert probe.starts_ms["now"][0] < deferred_score


async def test_a_job_held_by_another_workers_in_progress_key_is_skipped(
    pool: ArqRedis, probe: Probe, backend: FakeBackend, start_worker: Callable[..., CoditectWorker]
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
    assert token is not None
    assert token.decode() == worker._token
    assert re.fullmatch(r".+:\d+:[0-9a-f]{8}", token.decode())
    assert 4000 < ttl_ms <= 5000
    assert await pool.get("arq:retry:j1") == b"1"
    probe.release.set()
    assert await result_of(pool, "j1") == "released"


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
    assert await pool.get("arq:in-progress:mine") == worker._token.encode()
    assert 0 < await pool.pttl("arq:in-progress:mine") <= 300
    assert ("mine", 2) not in probe.calls, "a renewed job is not claimed again"
    probe.release.set()
    assert await result_of(pool, "mine") == "released"


async def test_a_dead_workers_job_runs_again_after_its_lease(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    await pool.enqueue_job("echo", "x", _job_id="j1")
    claim = pool.register_script(script("claim"))
    claimed_ms = max(now_ms(), int(await pool.zscore(QUEUE, "j1")))  # ARQ rounds its timestamps
    ((job_id, payload, job_try, _, aborted),) = await claim(
        keys=[QUEUE, leases_key(QUEUE)], args=[claimed_ms, 200, 10, "dead"]
    )
    assert (job_id, job_try, aborted) == (b"j1", 1, 0)
    assert job_deserializer(payload)["f"] == "echo"

    start_worker()  # the dead worker never finishes: a live one runs the job once the lease ends

    result = await result_of(pool, "j1")
    assert result["try"] == 2
    assert (await result_info(pool, "j1")).job_try == 2
    assert probe.calls == [("j1", 2)]
    assert probe.starts_ms["j1"][0] >= claimed_ms + 200


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
            keys=[settings.queue_name, leases_key(settings.queue_name)], args=[now_ms(), 1000, 1, "token"]
        )

        assert await pool.pttl("arq:in-progress:j1") == 1000
    finally:
        await pool.aclose(close_connection_pool=True)


# -- retry, max tries, timeout --------------------------------------------------------------------


async def test_retry_with_defer_puts_the_job_back_at_the_deferred_score(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    worker = start_worker()
    await pool.enqueue_job("retry_once", 0.3, _job_id="j1")

    result = await result_of(pool, "j1")

    assert result["try"] == 2
    assert probe.retried_at_ms + 300 <= result["score"] <= probe.retried_at_ms + 400
    assert probe.starts_ms["j1"][1] >= result["score"]
    assert (worker.jobs_retried, worker.jobs_complete) == (1, 1)


async def test_retry_job_puts_the_job_back_at_once(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    await pool.enqueue_job("retry_job_once", _job_id="j1")

    assert await result_of(pool, "j1") == {"try": 2}
    assert probe.calls == [("j1", 1), ("j1", 2)]


async def test_job_hooks_see_each_job_start_and_end(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker]
) -> None:
    seen: list[tuple[str, str, int]] = []

    async def on_job_start(ctx: dict[str, Any]) -> None:
        seen.append(("start", ctx["job_id"], ctx["job_try"]))

    async def on_job_end(ctx: dict[str, Any]) -> None:
        seen.append(("end", ctx["job_id"], ctx["job_try"]))

    start_worker(on_job_start=on_job_start, on_job_end=on_job_end)
    await pool.enqueue_job("echo", 1, _job_id="j1")
    await result_of(pool, "j1")

    assert seen == [("start", "j1", 1), ("end", "j1", 1)]


@pytest.mark.parametrize(("function", "max_tries"), [("always_retry", 2), ("retry_at_most_once", 1)])
async def test_a_job_over_max_tries_fails_without_running_again(
    pool: ArqRedis,
    probe: Probe,
    start_worker: Callable[..., CoditectWorker],
    function: str,
    max_tries: int,
) -> None:
    start_worker(max_tries=2)
    await pool.enqueue_job(function, _job_id="j1")

    error = await failure_of(pool, "j1")

    assert (error.error_type, error.message) == ("JobExecutionFailed", f"max {max_tries} retries exceeded")
    assert probe.calls == [("j1", t) for t in range(1, max_tries + 1)]
    # The claim that found the tries used up ran nothing: attempts counts the starts that ran.
    assert (await result_info(pool, "j1")).job_try == max_tries
    result = result_from_arq(await pool.get("arq:result:j1"), "j1")
    assert (result.status, result.attempts) == (ExecutionStatus.FAILED, max_tries)


async def test_a_job_over_its_timeout_records_a_timeout_error(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    await pool.enqueue_job("slow", _job_id="j1")

    error = await failure_of(pool, "j1")

    assert error.error_type == "TimeoutError"
    assert result_from_arq(await pool.get("arq:result:j1"), "j1").status is ExecutionStatus.TIMEOUT


# -- abort ----------------------------------------------------------------------------------------


async def test_aborting_a_running_job_records_a_cancelled_error(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    worker = start_worker()
    await pool.enqueue_job("hold", _job_id="j1")
    await probe.wait_started("j1")

    await pool.zadd("arq:abort", {"j1": now_ms()})

    await cancellation_of(pool, "j1")
    assert probe.running == 0, "the job's coroutine was cancelled"
    assert result_from_arq(await pool.get("arq:result:j1"), "j1").status is ExecutionStatus.CANCELLED
    assert await pool.zcard("arq:abort") == 0
    assert worker.jobs_failed == 1


async def test_arq_job_abort_of_a_running_job_returns_true(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    job = await pool.enqueue_job("hold", _job_id="j1")
    assert job is not None
    await probe.wait_started("j1")

    assert await job.abort(timeout=5, poll_delay=0.01) is True
    assert probe.running == 0


async def test_a_job_aborted_before_it_starts_fails_without_running(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    await pool.enqueue_job("echo", "x", _job_id="j1")
    await pool.zadd("arq:abort", {"j1": now_ms()})
    start_worker()

    await cancellation_of(pool, "j1")

    assert probe.calls == []
    assert await pool.zcard("arq:abort") == 0


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


# -- bad payloads ---------------------------------------------------------------------------------


class _CreatesFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _pickled_job(path: Path) -> bytes:
    return pickle.dumps({"t": 1, "f": "echo", "a": [_CreatesFile(path)], "k": {}, "et": 0})


@pytest.mark.parametrize(
    ("make_payload", "message"),
    [
        (lambda _: b"\xff\xfe not json", "unreadable job payload, not executed"),
        (_pickled_job, "unreadable job payload, not executed: refusing a pickle payload"),
        (lambda _: b"[1, 2, 3]", "unreadable job payload, not executed"),
        (lambda _: b'{"f": "echo"}', "unreadable job payload, not executed: 'a'"),
        (
            lambda _: job_serializer({"t": 1, "f": "nope", "a": [], "k": {}, "et": 0}),
            "function 'nope' not found",
        ),
        (lambda _: None, "job expired"),
    ],
    ids=["not-json", "pickle", "json-list", "json-wrong-keys", "unknown-function", "no-payload"],
)
async def test_a_bad_payload_fails_clearly_never_runs_and_the_worker_keeps_going(
    pool: ArqRedis,
    probe: Probe,
    start_worker: Callable[..., CoditectWorker],
    tmp_path: Path,
    make_payload: Callable[[Path], bytes | None],
    message: str,
) -> None:
    target = tmp_path / "pwned"
    payload = make_payload(target)
    if payload is not None:
        await pool.set("arq:job:bad", payload)
    await pool.zadd(QUEUE, {"bad": now_ms()})
    worker = start_worker()

    error = await failure_of(pool, "bad")

    assert error.error_type == "JobExecutionFailed"
    assert error.message.startswith(message)
    assert probe.calls == []
    assert not target.exists()
    assert await pool.zscore(QUEUE, "bad") is None
    await pool.enqueue_job("echo", "good", _job_id="good")
    assert (await result_of(pool, "good"))["value"] == "good"
    assert (worker.jobs_failed, worker.jobs_complete) == (1, 1)


async def test_a_failing_hook_is_recorded_as_a_failed_job_and_the_worker_keeps_going(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    async def on_job_start(ctx: dict[str, Any]) -> None:
        if ctx["job_id"].startswith("boom"):
            raise RuntimeError("hook broke")

    start_worker(on_job_start=on_job_start)
    await pool.enqueue_job("echo", "x", _job_id="boom1")

    error = await failure_of(pool, "boom1")

    assert (error.error_type, error.message) == ("RuntimeError", "hook broke")
    assert probe.calls == []
    await pool.enqueue_job("echo", "y", _job_id="fine")
    assert (await result_of(pool, "fine"))["value"] == "y"


# -- finishing ------------------------------------------------------------------------------------


async def test_the_finish_script_keeps_the_first_result_and_tells_the_batch(pool: ArqRedis) -> None:
    finish = pool.register_script(script("finish"))
    job_id, done = job_id_for("b1", "t1"), done_key("b1")
    await pool.set(f"arq:job:{job_id}", b"{}")
    await pool.set(f"arq:retry:{job_id}", 1)
    await pool.set(f"arq:in-progress:{job_id}", "tok")
    await pool.zadd(QUEUE, {job_id: 1})
    await pool.zadd("arq:abort", {job_id: 1})

    for payload in (b"first", b"second"):
        await finish(
            keys=[QUEUE, leases_key(QUEUE)], args=["tok", "ch", "done", job_id, payload, 30_000, done]
        )

    assert await pool.get(f"arq:result:{job_id}") == b"first"
    assert 29_000 < await pool.pttl(f"arq:result:{job_id}") <= 30_000
    assert await pool.lrange(done, 0, -1) == [job_id.encode(), job_id.encode()]
    assert 59_000 < await pool.pttl(done) <= 60_000, "a done list outlives a short result TTL"
    assert await pool.exists(f"arq:job:{job_id}", f"arq:retry:{job_id}", f"arq:in-progress:{job_id}") == 0
    assert await pool.zscore(QUEUE, job_id) is None
    assert await pool.zscore("arq:abort", job_id) is None


async def test_the_finish_script_keeps_forever_or_not_at_all(pool: ArqRedis) -> None:
    finish = pool.register_script(script("finish"))

    await finish(
        keys=[QUEUE, leases_key(QUEUE)],
        args=["tok", "ch", "done", "forever", b"r1", -1, "coditect:done:b1", "done", "never", b"r2", 0, ""],
    )

    assert await pool.pttl("arq:result:forever") == -1
    assert await pool.exists("arq:result:never") == 0
    assert await pool.lrange("coditect:done:b1", 0, -1) == [b"forever"]
    assert 86_000_000 < await pool.pttl("coditect:done:b1") <= 86_400_000


async def test_the_finish_script_requeues_only_a_job_this_worker_holds(
    pool: ArqRedis, backend: FakeBackend
) -> None:
    finish = pool.register_script(script("finish"))
    await pool.zadd(QUEUE, {"mine": 1, "theirs": 1})
    await pool.set("arq:in-progress:mine", "tok")
    await pool.set("arq:in-progress:theirs", "other")
    listener = backend.pool().pubsub()
    await listener.subscribe("ch")
    try:
        requeued = await finish(
            keys=[QUEUE, leases_key(QUEUE)],
            args=["tok", "ch", "again", "mine", 5000, "", "", "again", "theirs", 6000, "", ""],
        )
        await listener.get_message(timeout=1)  # the subscribe confirmation
        message = await listener.get_message(timeout=1)
    finally:
        await listener.aclose()

    assert requeued == 1
    assert await pool.zscore(QUEUE, "mine") == 5000
    assert await pool.exists("arq:in-progress:mine") == 0
    assert await pool.zscore(QUEUE, "theirs") == 1
    assert await pool.get("arq:in-progress:theirs") == b"other"
    assert message is not None
    assert (message["type"], message["data"]) == ("message", b"1")


async def test_a_worker_keeps_results_forever_when_asked(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker(keep_result_forever=True)
    await pool.enqueue_job("echo", 1, _job_id="worker-level")
    await pool.enqueue_job("echo", 1, _job_id="plain")
    await result_of(pool, "worker-level")

    assert await pool.pttl("arq:result:worker-level") == -1


async def test_a_function_can_keep_its_results_forever(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker(keep_result=60)
    await pool.enqueue_job("echo_forever", 1, _job_id="forever")
    await pool.enqueue_job("echo", 1, _job_id="plain")
    await result_of(pool, "forever")
    await result_of(pool, "plain")

    assert await pool.pttl("arq:result:forever") == -1
    assert 59_000 < await pool.pttl("arq:result:plain") <= 60_000


# -- wake-up, adopt, burst, redis errors ----------------------------------------------------------


async def test_an_idle_worker_wakes_on_enqueue_long_before_its_poll_delay(
    pool: ArqRedis, probe: Probe, backend: FakeBackend
) -> None:
    worker = backend.worker(FUNCTIONS, ctx={"probe": probe}, poll_delay=5)
    await backend.listening(1)
    await wait_until(lambda: pool.exists(worker.health_check_key), what="the first loop iteration")
    await wait_until(lambda: _true(not worker._wake.is_set()), what="the worker to go idle")
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)

    assert await store.enqueue("b1", [AgentTask(id="t1", title="wake up")]) == 1
    done = await store.wait_done("b1", timeout_s=1.0)

    assert done == [job_id_for("b1", "t1")]
    assert probe.calls == [(job_id_for("b1", "t1"), 1)]


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
    await wait_until(lambda: _true(not worker._wake.is_set()), what="the worker to go idle")

    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    await store.enqueue("b1", [AgentTask(id="t1", title="after the outage")])

    assert await store.wait_done("b1", timeout_s=1.0) == [job_id_for("b1", "t1")], "woken, not polled"
    assert refusals == [1]
    assert "wake-up channel lost (pub/sub refused); resubscribing" in caplog.text


async def test_adopt_turns_a_plain_arq_worker_into_a_coditect_worker(
    settings: Settings, backend: FakeBackend, pool: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ARQ's own main() logs Redis INFO, which fakeredis does not implement.
    async def no_info(*_: Any) -> None:
        return None

    monkeypatch.setattr(arq.worker, "log_redis_info", no_info)
    tuned = settings.model_copy(update={"lease_s": 7.0, "poll_interval_s": 0.02, "queue_name": QUEUE})
    found: list[Worker | None] = []

    async def on_startup(ctx: dict[str, Any]) -> None:
        found.append(calling_worker())
        await startup(ctx)

    worker = Worker(
        **{**worker_options(tuned), "on_startup": on_startup},
        redis_pool=backend.pool(track=False),
        handle_signals=False,
        ctx={SETTINGS_KEY: tuned, EMBEDDED_KEY: True},
    )
    assert type(worker) is Worker
    backend.start(worker)
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    await store.enqueue("b1", [AgentTask(id="t1", title="hello")])

    # Only coditect's engine pushes to the batch's done list.
    assert await store.wait_done("b1", timeout_s=5) == [job_id_for("b1", "t1")]
    assert found == [worker]
    assert type(worker) is CoditectWorker
    assert isinstance(worker, CoditectWorker)
    assert worker.lease_s == 7.0
    (result,) = (await store.fetch_results([job_id_for("b1", "t1")])).values()
    assert result.status is ExecutionStatus.SUCCESS


async def test_adopt_keeps_a_coditect_worker_and_sets_its_lease(backend: FakeBackend) -> None:
    # async: ARQ's Worker() takes the running loop (a sync test would make, and leak, a new one)
    worker = CoditectWorker([func(echo, name="echo")], redis_pool=backend.pool(), handle_signals=False)

    assert adopt(worker, 3.0) is worker
    assert (type(worker), worker.lease_s) == (CoditectWorker, 3.0)


async def test_calling_worker_is_none_outside_a_worker() -> None:
    assert calling_worker() is None


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


async def test_a_redis_error_in_the_claim_loop_is_retried(
    pool: ArqRedis,
    backend: FakeBackend,
    start_worker: Callable[..., CoditectWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = start_worker()
    await backend.listening(1)
    real_claim = worker._claim
    failures: list[int] = []

    async def claim_once_failing(**kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise RedisConnectionError("connection reset by peer")
        return await real_claim(**kwargs)

    worker._claim = claim_once_failing
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

    worker._heartbeat_script = broken_heartbeat
    caplog.set_level(logging.WARNING, logger="coditect.engine.worker")
    await wait_until(lambda: _true("renewing 1 lease(s) failed: no route to host" in caplog.text))
    probe.release.set()

    assert await result_of(pool, "j1") == "released"


# -- the result flusher ---------------------------------------------------------------------------


class _FlakyScript:
    """A finish script that raises ConnectionError on its first ``failures`` calls; records every call."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[list[Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, *, keys: list[str], args: list[Any]) -> int:
        self.calls.append(list(args))
        self.entered.set()
        await self.gate.wait()
        if len(self.calls) <= self.failures:
            raise RedisConnectionError("Redis blinked")
        return 0


def _record(job_id: str) -> FinishRecord:
    return FinishRecord("done", job_id, b"result", 1000, "")


async def test_the_flusher_keeps_records_and_retries_after_a_connection_error() -> None:
    script = _FlakyScript(failures=1)
    flusher = ResultFlusher(script, queue_name="q", token="tok", channel="q:wake")  # type: ignore[arg-type]
    flusher.start()
    try:
        async with asyncio.timeout(5):
            await flusher.submit(_record("j1"))
    finally:
        await flusher.close()

    assert len(script.calls) == 2
    assert script.calls[0] == script.calls[1] == ["tok", "q:wake", "done", "j1", b"result", 1000, ""]


async def test_the_flusher_writes_what_finished_meanwhile_in_one_call_and_close_drains_it() -> None:
    script = _FlakyScript()
    script.gate.clear()
    flusher = ResultFlusher(script, queue_name="q", token="tok", channel="q:wake")  # type: ignore[arg-type]
    flusher.start()
    first = asyncio.create_task(flusher.submit(_record("j1")))
    async with asyncio.timeout(5):
        await script.entered.wait()
    later = [asyncio.create_task(flusher.submit(_record(f"j{i}"))) for i in (2, 3)]
    closing = asyncio.create_task(flusher.close())  # starts after the submits (tasks run in order)

    script.gate.set()
    async with asyncio.timeout(5):
        await closing
        await asyncio.gather(first, *later)

    assert [call[3::5] for call in script.calls] == [["j1"], ["j2", "j3"]]


async def test_closing_the_flusher_gives_up_on_records_redis_never_takes() -> None:
    script = _FlakyScript(failures=1000)
    flusher = ResultFlusher(script, queue_name="q", token="tok", channel="q:wake")  # type: ignore[arg-type]
    flusher.start()
    pending = asyncio.create_task(flusher.submit(_record("j1")))
    async with asyncio.timeout(5):
        await script.entered.wait()

    await flusher.close(timeout_s=0.1)

    with pytest.raises(ConnectionError, match="result not written: worker shut down"):
        await pending
    await flusher.close()  # closing again is a no-op


async def _true(value: bool) -> bool:
    return value
