"""One job, the way ARQ's ``Worker.run_job`` runs it: checks, ``ctx``, hooks, retries, aborts, results,
cron jobs and ARQ's log lines, through a real CoditectWorker on fakeredis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import arq.utils
import pytest
from arq.connections import ArqRedis
from arq.cron import cron
from arq.worker import func

from coditect.client.batches import BatchStore
from coditect.engine.context import JOB_RUN_KEY, RUNTIME_KEY, JobRun
from coditect.engine.jobrun import batch_info
from coditect.engine.metrics import WorkerMetrics
from coditect.engine.runtime import WorkerRuntime
from coditect.engine.worker import CoditectWorker
from coditect.errors import BudgetDeferred, CapacityDeferred
from coditect.execution.executor import TaskExecutor
from coditect.keys import ABORT_SET, DEAD_LETTERS_KEY, JOB_NAME, job_id_for
from coditect.models import AgentTask, ExecutionStatus
from coditect.results import result_from_arq
from coditect.serialization import job_serializer
from coditect.settings import Settings
from tests.engine.support import (
    Probe,
    cancellation_of,
    echo,
    failure_of,
    result_info,
    result_of,
    true,
)
from tests.support.fake_backend import QUEUE, FakeBackend, now_ms, wait_until

# -- what a job gets: ctx, _job_try, args and kwargs ---------------------------------------------


async def test_ctx_holds_arqs_job_fields_the_workers_ctx_and_the_engines_job_run(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    worker = start_worker()
    before_ms = now_ms()
    await pool.enqueue_job("echo", 1, _job_id="j1")
    await result_of(pool, "j1")

    (ctx,) = probe.contexts
    assert (ctx["job_id"], ctx["job_try"]) == ("j1", 1)
    assert ctx["redis"] is worker.pool
    assert ctx["probe"] is probe
    assert ctx["enqueue_time"].timestamp() * 1000 >= before_ms - 1
    assert isinstance(ctx["score"], int)
    run = ctx[JOB_RUN_KEY]
    assert isinstance(run, JobRun)
    assert (run.job_id, run.job_try, run.batch_id, run.task_id, run.worker) == (
        "j1", 1, None, None, worker.worker_name,
    )  # fmt: skip


async def test_a_batch_task_knows_its_batch_and_task(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    await store.submit("b1", [AgentTask(id="t1", title="hello")])

    await result_of(pool, job_id_for("b1", "t1"))

    run = probe.contexts[0][JOB_RUN_KEY]
    assert (run.batch_id, run.task_id, run.depth) == ("b1", "t1", 0)
    assert (await store.states("b1")) == {"t1": ExecutionStatus.SUCCESS}


async def test_an_enqueued_job_try_is_the_try_the_job_runs_as(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    await pool.enqueue_job("echo", 1, _job_id="j1", _job_try=3)

    result = await result_of(pool, "j1")

    assert result["try"] == 3
    assert probe.calls == [("j1", 3)]
    assert (await result_info(pool, "j1")).job_try == 3


async def test_an_enqueued_job_try_counts_on_from_there_on_a_retry(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    await pool.enqueue_job("retry_once", 0, _job_id="j1", _job_try=1)
    await pool.enqueue_job("retry_job_once", _job_id="j2", _job_try=2)

    assert (await result_of(pool, "j1"))["try"] == 2
    assert await result_of(pool, "j2") == {"try": 2}, "try 2 from the enqueue: no retry"
    assert (await result_info(pool, "j2")).job_try == 2


async def test_a_result_records_the_jobs_args_and_kwargs(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    await pool.enqueue_job("add", 2, 3, c=4, _job_id="j1")

    assert await result_of(pool, "j1") == 9
    info = await result_info(pool, "j1")
    # JSON has no tuples: ARQ's pickle gives args (2, 3), coditect's JSON gives a list.
    assert (info.args, info.kwargs) == ([2, 3], {"c": 4})
    assert (info.function, info.success, info.result) == ("add", True, 9)


# -- hooks ----------------------------------------------------------------------------------------


async def test_job_hooks_run_in_arqs_order_after_job_end_once_the_result_is_written(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker]
) -> None:
    seen: list[tuple[str, str, int, bool]] = []

    def hook(name: str) -> Callable[[dict[str, Any]], Any]:
        async def record(ctx: dict[str, Any]) -> None:
            written = bool(await pool.exists(f"arq:result:{ctx['job_id']}"))
            seen.append((name, ctx["job_id"], ctx["job_try"], written))

        return record

    start_worker(on_job_start=hook("start"), on_job_end=hook("end"), after_job_end=hook("after"), max_jobs=1)
    await pool.enqueue_job("echo", 1, _job_id="j1")
    await pool.enqueue_job("retry_once", 0, _job_id="j2")

    await result_of(pool, "j1")
    await result_of(pool, "j2")
    await wait_until(lambda: true(len(seen) == 9), what="every hook of both jobs")

    assert seen == [
        ("start", "j1", 1, False), ("end", "j1", 1, False), ("after", "j1", 1, True),
        ("start", "j2", 1, False), ("end", "j2", 1, False), ("after", "j2", 1, False),
        ("start", "j2", 2, False), ("end", "j2", 2, False), ("after", "j2", 2, True),
    ]  # fmt: skip


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


# -- retry, max tries, timeout --------------------------------------------------------------------


async def test_retry_with_defer_puts_the_job_back_at_the_deferred_score(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    worker = start_worker()
    await pool.enqueue_job("retry_once", 0.3, _job_id="j1")

    result = await result_of(pool, "j1")

    assert result["try"] == 2
    assert probe.retried_at_ms + 300 <= result["score"] <= probe.retried_at_ms + 400
    assert probe.starts_ms["j1"][1] >= result["score"] - 1  # ARQ's scores are rounded, not floored
    assert (worker.jobs_retried, worker.jobs_complete) == (1, 1)


async def test_retry_job_puts_the_job_back_at_once(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker()
    await pool.enqueue_job("retry_job_once", _job_id="j1")

    assert await result_of(pool, "j1") == {"try": 2}
    assert probe.calls == [("j1", 1), ("j1", 2)]


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
    # The claim that found the tries used up ran nothing: the result counts the tries that ran.
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


@pytest.mark.parametrize(
    ("function", "error_type"),
    [("always_retry", "Retry"), ("retry_job_once", "RetryJob"), ("raise_cancelled", "CancelledError")],
)
async def test_without_retry_jobs_a_retry_or_cancellation_fails_the_job_once(
    pool: ArqRedis,
    probe: Probe,
    start_worker: Callable[..., CoditectWorker],
    function: str,
    error_type: str,
) -> None:
    worker = start_worker(retry_jobs=False)
    await pool.enqueue_job(function, _job_id="j1")

    with pytest.raises((asyncio.CancelledError, Exception)) as caught:
        await result_of(pool, "j1")

    assert probe.calls == [("j1", 1)]
    assert (worker.jobs_failed, worker.jobs_retried, worker.jobs_complete) == (1, 0, 0)
    assert getattr(caught.value, "error_type", type(caught.value).__name__) == error_type
    assert await pool.zscore(QUEUE, "j1") is None


async def test_a_job_without_provider_capacity_goes_back_and_the_wait_is_not_a_try(
    pool: ArqRedis, probe: Probe, backend: FakeBackend
) -> None:
    async def deferred_once(ctx: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
        probe.record(ctx)
        if len(probe.calls) == 1:
            raise CapacityDeferred(0.05)
        return {"task_id": task["id"], "status": "success", "attempts": ctx["job_try"]}

    worker = backend.worker([func(deferred_once, name="execute_task")])
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    await store.submit("b1", [AgentTask(id="t1", title="waits for capacity")])

    result = await result_of(pool, job_id_for("b1", "t1"))

    assert result["attempts"] == 1, "the deferred start did not count"
    assert [job_try for _, job_try in probe.calls] == [1, 1]
    assert probe.starts_ms[job_id_for("b1", "t1")][1] - probe.starts_ms[job_id_for("b1", "t1")][0] >= 49
    assert (worker.jobs_retried, worker.jobs_complete) == (1, 1)
    events = [fields[b"type"] for _, fields in await pool.xrange("coditect:events:b1")]
    assert events.count(b"task.queued") == 2


@pytest.mark.parametrize(
    ("deferral", "line"),
    [
        (CapacityDeferred(0.05), "waiting for capacity: back in 0.05s"),
        (BudgetDeferred(0.05), "waiting for its batch's budget: back in 0.05s"),
    ],
    ids=["capacity", "budget"],
)
async def test_a_deferred_task_says_what_it_waits_for(
    pool: ArqRedis, probe: Probe, backend: FakeBackend, caplog: pytest.LogCaptureFixture,
    deferral: CapacityDeferred, line: str,
) -> None:  # fmt: skip
    async def deferred_once(ctx: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
        probe.record(ctx)
        if len(probe.calls) == 1:
            raise deferral
        return {"task_id": task["id"], "status": "success", "attempts": ctx["job_try"]}

    backend.worker([func(deferred_once, name="execute_task")])
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    with caplog.at_level(logging.INFO, logger="arq.worker"):
        await store.submit("b1", [AgentTask(id="t1", title="waits")])
        await result_of(pool, job_id_for("b1", "t1"))

    [deferred] = [record.getMessage() for record in caplog.records if "↻" in record.getMessage()]
    assert deferred.endswith(f"↻ coditect:b1:t1:execute_task {line}")


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


async def test_a_running_task_of_a_cancelled_batch_ends_with_the_batchs_reason(
    pool: ArqRedis, probe: Probe, backend: FakeBackend
) -> None:
    async def held_task(ctx: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
        probe.record(ctx)
        await asyncio.Event().wait()
        return {}

    worker = backend.worker([func(held_task, name="execute_task")])
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    await store.submit("b1", [AgentTask(id="t1", title="runs", agent="writer")])
    await probe.wait_started(job_id_for("b1", "t1"))

    assert await store.cancel("b1", reason="cancelled by user") == (0, 0, 1)

    result = await result_of(pool, job_id_for("b1", "t1"))
    assert result == {
        "task_id": "t1", "status": "cancelled", "output": "", "error": "cancelled by user",
        "agent": "writer", "attempts": 1,
    }  # fmt: skip
    assert await store.states("b1") == {"t1": ExecutionStatus.CANCELLED}
    assert worker.jobs_failed == 1


async def test_without_allow_abort_jobs_a_job_in_the_abort_set_runs(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    await pool.enqueue_job("echo", "x", _job_id="j1")
    await pool.zadd("arq:abort", {"j1": now_ms()})
    await pool.zadd("arq:abort", {"someone-elses": now_ms()})
    start_worker(allow_abort_jobs=False)

    assert (await result_of(pool, "j1"))["value"] == "x"
    assert probe.calls == [("j1", 1)]
    # As ARQ's finish_job: the finished job leaves the abort set; the worker never reads it.
    assert await pool.zrange("arq:abort", 0, -1) == [b"someone-elses"]


# -- bad payloads ---------------------------------------------------------------------------------


class _CreatesFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _pickled_job(path: Path) -> bytes:
    return pickle.dumps({"t": 1, "f": "echo", "a": [_CreatesFile(path)], "k": {}, "et": 0})


@pytest.mark.parametrize(
    ("make_payload", "message", "dead_letter"),
    [
        (
            lambda _: b"\xff\xfe not json",
            "unreadable job payload, not executed: job payload is not UTF-8 text",
            True,
        ),
        (_pickled_job, "unreadable job payload, not executed: refusing a pickle payload", True),
        (
            lambda _: b"[1, 2, 3]",
            "unreadable job payload, not executed: job payload is not a JSON object",
            True,
        ),
        (
            lambda _: b'{"f": "echo"}',
            "unreadable job payload, not executed: job payload has no argument list",
            True,
        ),
        (
            lambda _: b'{"t": 1, "f": "echo", "a": {}, "k": {}, "et": 0}',
            "unreadable job payload, not executed: job payload has no argument list",
            True,
        ),
        (
            lambda _: job_serializer({"t": 1, "f": "nope", "a": [], "k": {}, "et": 0}),
            "function 'nope' not found",
            False,
        ),
        (lambda _: None, "job expired", False),
    ],
    ids=[
        "not-json",
        "pickle",
        "json-list",
        "json-wrong-keys",
        "args-not-a-list",
        "unknown-function",
        "expired",
    ],
)
async def test_a_bad_payload_fails_clearly_never_runs_and_the_worker_keeps_going(
    pool: ArqRedis,
    probe: Probe,
    start_worker: Callable[..., CoditectWorker],
    tmp_path: Path,
    make_payload: Callable[[Path], bytes | None],
    message: str,
    dead_letter: bool,
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
    letters = [json.loads(entry) for entry in await pool.lrange(DEAD_LETTERS_KEY, 0, -1)]
    assert [entry["job_id"] for entry in letters] == (["bad"] if dead_letter else [])
    await pool.enqueue_job("echo", "good", _job_id="good")
    assert (await result_of(pool, "good"))["value"] == "good"
    assert (worker.jobs_failed, worker.jobs_complete) == (1, 1)


# -- results --------------------------------------------------------------------------------------


async def test_a_worker_keeps_results_forever_when_asked(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker]
) -> None:
    start_worker(keep_result_forever=True)
    await pool.enqueue_job("echo", 1, _job_id="worker-level")
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


async def test_a_worker_that_keeps_no_results_still_finishes_the_job(
    pool: ArqRedis, probe: Probe, backend: FakeBackend, start_worker: Callable[..., CoditectWorker]
) -> None:
    worker = start_worker(keep_result=0)
    await pool.enqueue_job("echo", 1, _job_id="j1")

    await wait_until(lambda: true(worker.jobs_complete == 1), what="the job to finish")
    await wait_until(lambda: true(not worker.tasks), what="its outcome to be written")

    assert probe.calls == [("j1", 1)]
    assert await pool.exists("arq:result:j1", "arq:job:j1", "arq:in-progress:j1", "arq:retry:j1") == 0
    assert await pool.zscore(QUEUE, "j1") is None


# -- cron jobs ------------------------------------------------------------------------------------


async def test_a_cron_jobs_in_progress_key_is_kept_so_a_late_duplicate_of_its_tick_does_not_run(
    pool: ArqRedis, probe: Probe, backend: FakeBackend
) -> None:
    # A schedule that never comes round during the test: ticks are enqueued here, by hand.
    tick = cron(echo, name="cron:tick", month=1, day=1, hour=0, minute=0, second=0, keep_result=0)
    worker = CoditectWorker(
        [], cron_jobs=[tick], redis_pool=backend.pool(track=False), queue_name=QUEUE,
        handle_signals=False, ctx={"probe": probe},
    )  # fmt: skip
    job_id = "cron:tick:1700000000000"  # ARQ's id for a tick: the job name and the tick's time
    try:
        await pool.enqueue_job("cron:tick", _job_id=job_id)
        await worker._poll_iteration()
        await wait_until(lambda: true(worker.jobs_complete == 1 and not worker.tasks), what="the tick")

        assert probe.calls == [(job_id, 1)]
        assert 59_000 < await pool.pttl(f"arq:in-progress:{job_id}") <= 60_000
        assert await pool.exists(f"arq:job:{job_id}", f"arq:result:{job_id}") == 0

        assert await pool.enqueue_job("cron:tick", _job_id=job_id) is not None  # ARQ lets it in...
        await worker._poll_iteration()

        assert worker.tasks == {}, "...and its worker does not run it while the key is kept"
        assert probe.calls == [(job_id, 1)]
        assert await pool.zscore(QUEUE, job_id) is not None

        await pool.delete(f"arq:in-progress:{job_id}")  # 60 s later
        await worker._poll_iteration()
        await wait_until(lambda: true(worker.jobs_complete == 2 and not worker.tasks), what="the rerun")
        assert probe.calls == [(job_id, 1), (job_id, 1)]
    finally:
        await worker.close()


async def test_a_cron_job_keeps_its_in_progress_key_after_failing_too(
    pool: ArqRedis, probe: Probe, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(ctx: dict[str, Any]) -> None:
        raise ValueError("no")

    monkeypatch.setattr("arq.worker.keep_cronjob_progress", 5)  # read at each use, as ARQ does
    worker = CoditectWorker(
        [], cron_jobs=[cron(broken, name="cron:broken", month=1, day=1, hour=0, minute=0, second=0)],
        redis_pool=backend.pool(track=False), queue_name=QUEUE, handle_signals=False,
    )  # fmt: skip
    try:
        await pool.enqueue_job("cron:broken", _job_id="tick")
        await worker._poll_iteration()
        await wait_until(lambda: true(worker.jobs_failed == 1 and not worker.tasks), what="the tick")

        assert 4_000 < await pool.pttl("arq:in-progress:tick") <= 5_000
    finally:
        await worker.close()


# -- ARQ's log lines ------------------------------------------------------------------------------


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(level, message) of each ``arq.worker`` record, timings as ``X.XXs`` (ARQ's tests do that)."""
    return [
        (record.levelname, re.sub(r"\d+\.\d\ds", "X.XXs", record.getMessage()).strip())
        for record in caplog.records
        if record.name == "arq.worker"
    ]


async def test_arqs_job_log_lines_at_arqs_levels(
    pool: ArqRedis,
    probe: Probe,
    start_worker: Callable[..., CoditectWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="arq.worker")
    start_worker(max_jobs=1)
    await pool.enqueue_job("add", 2, 3, c=4, _job_id="ok")
    await pool.enqueue_job("retry_once", 0.01, _job_id="again")
    await pool.enqueue_job("retry_job_once", _job_id="rerun")
    await pool.enqueue_job("fail", _job_id="broken")
    await pool.zadd(QUEUE, {"gone": now_ms()})
    await pool.set("arq:job:nowhere", job_serializer({"t": 1, "f": "nope", "a": [], "k": {}, "et": 0}))
    await pool.zadd(QUEUE, {"nowhere": now_ms()})
    await pool.enqueue_job("echo", _job_id="early")
    await pool.zadd("arq:abort", {"early": now_ms()})
    for job_id in ("ok", "again", "rerun"):
        await result_of(pool, job_id)
    for job_id in ("broken", "gone", "nowhere"):
        await failure_of(pool, job_id)
    await cancellation_of(pool, "early")
    await pool.enqueue_job("hold", _job_id="stopped")
    await probe.wait_started("stopped")
    await pool.zadd("arq:abort", {"stopped": now_ms()})
    await cancellation_of(pool, "stopped")

    lines = _lines(caplog)
    expected = [
        ("INFO", "X.XXs → ok:add(2, 3, c=4)"),
        ("INFO", "X.XXs ← ok:add ● 9"),
        ("INFO", "X.XXs → again:retry_once(0.01)"),
        ("INFO", "X.XXs ↻ again:retry_once retrying job in X.XXs"),
        ("INFO", "X.XXs → again:retry_once(0.01) try=2"),
        ("INFO", "X.XXs → rerun:retry_job_once()"),
        ("INFO", "X.XXs ↻ rerun:retry_job_once cancelled, will be run again"),
        ("INFO", "X.XXs → rerun:retry_job_once() try=2"),
        ("INFO", "X.XXs → broken:fail()"),
        ("ERROR", "X.XXs ! broken:fail failed, ErrorWithExtra: no such order"),
        ("WARNING", "job gone expired"),
        ("WARNING", "job nowhere, function 'nope' not found"),
        ("INFO", "X.XXs ⊘ early:echo aborted before start"),
        ("INFO", "X.XXs → stopped:hold()"),
        ("INFO", "X.XXs ⊘ stopped:hold aborted"),
    ]
    assert [line for line in expected if line not in lines] == []
    failure = next(r for r in caplog.records if r.name == "arq.worker" and r.levelno == logging.ERROR)
    assert failure.exc_info is not None
    assert failure.exc_info[0].__name__ == "ErrorWithExtra"
    assert getattr(failure, "extra", None) == {"order": "o-17"}


async def test_a_jobs_times_are_on_arqs_clock_so_a_prompt_start_is_never_negative(
    pool: ArqRedis,
    probe: Probe,
    backend: FakeBackend,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="arq.worker")
    frozen = 1_700_000_000.0006  # ARQ rounds this up to ...001 ms; a floor would say ...000
    monkeypatch.setattr(time, "time", lambda: frozen)
    monkeypatch.setattr(arq.utils, "time", lambda: frozen)
    await pool.enqueue_job("echo", _job_id="j1")
    worker = CoditectWorker(
        [func(echo, name="echo")], redis_pool=backend.pool(track=False), queue_name=QUEUE,
        handle_signals=False, ctx={"probe": probe},
    )  # fmt: skip
    try:
        await worker._poll_iteration()
        await result_of(pool, "j1")
    finally:
        await worker.close()

    starts = [r.getMessage() for r in caplog.records if "→ j1:echo" in r.getMessage()]
    assert starts == ["  0.00s → j1:echo()"]
    info = await result_info(pool, "j1")
    assert info.enqueue_time <= info.start_time <= info.finish_time


async def test_a_job_over_max_tries_is_logged_as_arq_does(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="arq.worker")
    start_worker(max_tries=1)
    await pool.enqueue_job("always_retry", _job_id="j1")

    await failure_of(pool, "j1")

    assert ("WARNING", "X.XXs ! j1:always_retry max retries 1 exceeded") in _lines(caplog)


async def test_a_timed_out_job_is_logged_as_a_failure_with_its_traceback(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="arq.worker")
    start_worker()
    await pool.enqueue_job("slow", _job_id="j1")

    await failure_of(pool, "j1")

    assert ("ERROR", "X.XXs ! j1:slow failed, TimeoutError:") in _lines(caplog)


async def test_results_are_not_logged_when_log_results_is_off(
    pool: ArqRedis, start_worker: Callable[..., CoditectWorker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="arq.worker")
    start_worker(log_results=False)
    await pool.enqueue_job("add", 2, 3, _job_id="j1")

    assert await result_of(pool, "j1") == 5

    assert ("INFO", "X.XXs ← j1:add ●") in _lines(caplog)


# -- a batch task's bookkeeping -------------------------------------------------------------------


def test_batch_info_carries_a_results_status_usage_and_error() -> None:
    result = {
        "status": "failed", "attempts": 2, "duration_s": 1.5, "error": "bad\n  request",
        "usage": {"input_tokens": 3, "output_tokens": 4}, "cost_usd": None, "agent": "writer", "model": "m",
    }  # fmt: skip

    info = json.loads(batch_info("failed", 9, result=result))

    assert info == {
        "code": "f", "attempt": 2, "duration": 1.5, "usage": [3, 4, 0, 0], "cost": None,
        "agent": "writer", "model": "m", "error": "bad request",
    }  # fmt: skip
    assert json.loads(batch_info("timeout", 1, error="x" * 1000))["error"].endswith("…")


async def test_a_timed_out_batch_task_is_recorded_as_timeout_in_its_batch(
    pool: ArqRedis, backend: FakeBackend
) -> None:
    async def stuck(ctx: dict[str, Any], task: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    backend.worker([func(stuck, name="execute_task", timeout=0.05)])
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    await store.submit("b1", [AgentTask(id="t1", title="never ends")])

    await failure_of(pool, job_id_for("b1", "t1"))

    assert await store.states("b1") == {"t1": ExecutionStatus.TIMEOUT}
    (result,) = await store.results("b1") or []
    assert (result.status, result.error) == (ExecutionStatus.TIMEOUT, "timed out (the job's time limit)")


# -- the worker's metrics ---------------------------------------------------------------------------


def tasks_counted(metrics: WorkerMetrics) -> dict[tuple[str, str, str, str], float]:
    """``coditect_tasks_total`` by (status, agent, provider, model), counts above zero."""
    return {
        (s.labels["status"], s.labels["agent"], s.labels["provider"], s.labels["model"]): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "coditect_tasks_total" and s.value
    }


@pytest.mark.parametrize(
    ("how", "status"),
    [
        ("returns", "success"),
        ("raises", "failed"),
        ("over-arqs-timeout", "timeout"),
        ("aborted", "cancelled"),
        ("aborted-before-start", "cancelled"),
        ("over-max-tries", "failed"),
    ],
)
async def test_every_task_that_ends_is_counted_once_in_the_metrics_whatever_ended_it(
    settings: Settings, pool: ArqRedis, probe: Probe, backend: FakeBackend, how: str, status: str
) -> None:
    async def task_job(ctx: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
        probe.record(ctx)
        if how == "raises":
            raise ValueError("a bug in the job")
        if how == "returns":
            return {"task_id": task["id"], "status": "success", "agent": task["agent"], "provider": "offline",
                    "model": "offline-1", "usage": {"input_tokens": 3, "output_tokens": 2}}  # fmt: skip
        await asyncio.Event().wait()
        return {}

    metrics = WorkerMetrics()
    runtime = WorkerRuntime(pool, TaskExecutor(settings), metrics=metrics)
    timeout_s = 0.05 if how == "over-arqs-timeout" else None
    store = BatchStore(pool, queue_name=QUEUE, keep_result_s=60)
    job_id = job_id_for("b1", "t1")
    task = AgentTask(id="t1", title="counted", agent="writer")
    try:
        if how == "over-max-tries":
            await pool.enqueue_job(JOB_NAME, task.model_dump(mode="json"), _job_id=job_id, _job_try=6)
        else:
            await store.submit("b1", [task])
        if how == "aborted-before-start":
            await pool.zadd(ABORT_SET, {job_id: now_ms()})
        backend.worker(
            [func(task_job, name=JOB_NAME, timeout=timeout_s, max_tries=5)], ctx={RUNTIME_KEY: runtime}
        )
        if how == "aborted":
            await probe.wait_started(job_id)
            await store.cancel("b1", reason="cancelled by user")
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await result_of(pool, job_id)
    finally:
        await runtime.aclose()

    model = ("offline", "offline-1") if how == "returns" else ("", "")
    assert tasks_counted(metrics) == {(status, "writer", *model): 1}
