"""One claimed job, from its payload to its finish record, the way ARQ's ``Worker.run_job`` does it.

The same checks in the same order (expired, unreadable, aborted before start, unknown function,
``_job_try`` from the enqueue, max tries), the same hooks, outcomes and log lines on ``arq.worker``;
what differs is where the job came from (a batched claim) and where its outcome goes (the flusher).
A task of a batch also gets its batch bookkeeping (``batch_info``) in the same finish record.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import arq.worker
from arq.cron import CronJob
from arq.jobs import serialize_result
from arq.utils import args_to_string, ms_to_datetime, truncate
from arq.utils import timestamp_ms as _now_ms  # ARQ's clock (it rounds), as the enqueue time it records
from arq.worker import Function, JobExecutionFailed, Retry, RetryJob

from coditect.engine.claims import dead_letter
from coditect.engine.context import JOB_RUN_KEY, RUNTIME_KEY, JobRun
from coditect.engine.flusher import FinishRecord
from coditect.errors import CapacityDeferred
from coditect.keys import (
    BATCH_KEY_PREFIX,
    DEAD_LETTERS_KEY,
    JOB_NAME,
    RETRY_COUNTER_TTL_S,
    RETRY_PREFIX,
    split_job_id,
)
from coditect.logs import job_log_context
from coditect.results import result_from_outcome
from coditect.serialization import UnreadableJob, job_deserializer, read_job

if TYPE_CHECKING:
    from coditect.engine.claims import Claim
    from coditect.engine.runtime import WorkerRuntime
    from coditect.engine.slots import Slot
    from coditect.engine.worker import CoditectWorker

__all__ = ["JobRunner", "batch_info"]

arq_log = logging.getLogger("arq.worker")
logger = logging.getLogger(__name__)

_MAX_EVENT_ERROR_CHARS = 300
_NO_RESULT = object()
_STATUS_CODES = {"success": "s", "failed": "f", "timeout": "t", "cancelled": "c"}
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps with options builds one per call


@dataclass(frozen=True, slots=True)
class _Job:
    """A claimed job once its payload is read."""

    claim: Claim
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    enqueued_ms: int
    function: Function | CronJob | None = None

    @property
    def ref(self) -> str:
        return self.name if isinstance(self.function, CronJob) else f"{self.claim.job_id}:{self.name}"


def batch_info(status: str, job_try: int, *, result: dict[str, Any] | None = None, error: str = "") -> str:
    """The finish script's bookkeeping for a task of a batch (see ``finish.lua``)."""
    info: dict[str, Any] = {"code": _STATUS_CODES[status], "attempt": job_try}
    if result is not None:
        usage = result.get("usage") or {}
        info.update(
            attempt=result.get("attempts", job_try),
            duration=result.get("duration_s", 0),
            usage=[
                usage.get("input_tokens", 0),
                usage.get("output_tokens", 0),
                usage.get("cache_read_tokens", 0),
                usage.get("cache_write_tokens", 0),
            ],
            cost=result.get("cost_usd"),
            agent=result.get("agent") or "",
            model=result.get("model") or "",
        )
        error = result.get("error") or ""
    if error:
        info["error"] = truncate(" ".join(error.split()), _MAX_EVENT_ERROR_CHARS)
    return _COMPACT.encode(info)


class JobRunner:
    """Runs claimed jobs for one ``CoditectWorker``."""

    def __init__(self, worker: CoditectWorker) -> None:
        self.worker = worker

    async def run(self, claim: Claim, slot: Slot) -> None:
        worker = self.worker
        batch = split_job_id(claim.job_id)
        with job_log_context(
            job_id=claim.job_id,
            batch_id=batch[0] if batch else None,
            task_id=batch[1] if batch else None,
            attempt=claim.job_try,
            worker=worker.worker_name,
        ):
            ctx: dict[str, Any] | None = None
            try:
                job = await self._read(claim)
                if isinstance(job, FinishRecord):
                    record = job
                else:
                    ctx = self._context(job, slot)
                    record = await self._call(job, ctx)
            except Exception as err:  # a bug here must not lose the job: record it as failed
                logger.exception("job %s: internal error", claim.job_id)
                record = self._failed(claim, "<unknown>", err, start_ms=_now_ms())
            await worker._flusher.submit(record)
            if ctx is not None and worker.after_job_end:
                await worker.after_job_end(ctx)

    # -- before the call --------------------------------------------------------------------

    async def _read(self, claim: Claim) -> _Job | FinishRecord:
        worker = self.worker
        start_ms = _now_ms()
        if claim.problem:
            arq_log.error("job %s set aside: %s", claim.job_id, claim.problem)
            await worker.pool.lpush(DEAD_LETTERS_KEY, dead_letter(claim.job_id, claim.problem))  # type: ignore[misc]
            return self._failed(claim, "<unknown>", JobExecutionFailed(claim.problem), start_ms=start_ms)
        if not claim.payload:
            arq_log.warning("job %s expired", claim.job_id)
            return self._failed(claim, "<unknown>", JobExecutionFailed("job expired"), start_ms=start_ms)
        try:
            payload = read_job(claim.payload, worker.job_deserializer or job_deserializer)
        except Exception as err:  # a custom deserializer may raise anything
            reason = str(err) if isinstance(err, UnreadableJob) else f"{type(err).__name__}: {str(err)[:200]}"
            arq_log.error("job %s: payload is not a coditect JSON job (%s); set aside", claim.job_id, reason)
            entry = dead_letter(claim.job_id, f"unreadable payload: {reason}")
            await worker.pool.lpush(DEAD_LETTERS_KEY, entry)  # type: ignore[misc]
            error = JobExecutionFailed(f"unreadable job payload, not executed: {reason}")
            return self._failed(claim, "<unknown>", error, start_ms=start_ms)
        name, kwargs, enqueue_try = payload.function, payload.kwargs, payload.enqueue_try
        job = _Job(claim, name, payload.args, kwargs, payload.enqueued_ms)
        if claim.aborted:
            arq_log.info("%6.2fs ⊘ %s:%s aborted before start", _since(job.enqueued_ms), claim.job_id, name)
            return await self._aborted(job, start_ms)
        function = worker.functions.get(name)
        if function is None:
            arq_log.warning("job %s, function %r not found", claim.job_id, name)
            return self._failed(claim, name, JobExecutionFailed(f"function {name!r} not found"), job=job)
        job = _Job(claim, name, job.args, kwargs, job.enqueued_ms, function)
        if isinstance(enqueue_try, int) and enqueue_try > claim.job_try:
            # ARQ's _job_try: the enqueuer says how many tries this job has had already.
            claim = replace(claim, job_try=enqueue_try)
            job = _Job(claim, name, job.args, kwargs, job.enqueued_ms, function)
            await worker.pool.setex(RETRY_PREFIX + claim.job_id, RETRY_COUNTER_TTL_S, str(enqueue_try))
        max_tries = worker.max_tries if function.max_tries is None else function.max_tries
        if claim.job_try > max_tries:
            arq_log.warning(
                "%6.2fs ! %s max retries %d exceeded", _since(job.enqueued_ms), job.ref, max_tries
            )
            error = JobExecutionFailed(f"max {max_tries} retries exceeded")
            # The result counts the tries that ran (a task's attempts), not this claim, which runs
            # nothing; ARQ's own record would say one more.
            return self._failed(claim, name, error, job=job, job_try=claim.job_try - 1)
        return job

    def _context(self, job: _Job, slot: Slot) -> dict[str, Any]:
        claim, worker = job.claim, self.worker
        batch = split_job_id(claim.job_id)
        run = JobRun(
            job_id=claim.job_id,
            job_try=claim.job_try,
            idle=slot.idle,
            batch_id=batch[0] if batch else None,
            task_id=batch[1] if batch else None,
            depth=claim.depth,
            worker=worker.worker_name,
            budget=claim.budget,
        )
        return {
            **worker.ctx,
            "job_id": claim.job_id,
            "job_try": claim.job_try,
            "enqueue_time": ms_to_datetime(job.enqueued_ms),
            "score": claim.score,
            JOB_RUN_KEY: run,
        }

    # -- the call -----------------------------------------------------------------------------

    async def _call(self, job: _Job, ctx: dict[str, Any]) -> FinishRecord:
        worker, claim = self.worker, job.claim
        assert job.function is not None
        function = job.function
        if worker.on_job_start:
            await worker.on_job_start(ctx)
        start_ms = _now_ms()
        if arq_log.isEnabledFor(logging.INFO):
            extra = f" try={claim.job_try}" if claim.job_try > 1 else ""
            if start_ms - claim.score > 1200:
                extra += f" delayed={(start_ms - claim.score) / 1000:0.2f}s"
            arq_log.info(
                "%6.2fs → %s(%s)%s", (start_ms - job.enqueued_ms) / 1000, job.ref,
                args_to_string(job.args, job.kwargs), extra,
            )  # fmt: skip
        timeout_s = worker.job_timeout_s if function.timeout_s is None else function.timeout_s
        this_task = asyncio.current_task()
        assert this_task is not None
        worker.job_tasks[claim.job_id] = this_task  # what ARQ's abort check cancels
        result: Any = _NO_RESULT
        try:
            async with asyncio.timeout(timeout_s):
                result = await function.coroutine(ctx, *job.args, **job.kwargs)
        except asyncio.CancelledError:
            this_task.uncancel()  # handled here: the job's outcome must still be recorded
            record = await self._cancelled(job, start_ms)
        except CapacityDeferred as err:
            worker.jobs_retried += 1
            arq_log.info(
                "%6.2fs ↻ %s waiting for %s: back in %0.2fs", _since(start_ms), job.ref, err.waiting_for,
                err.delay_s,
            )  # fmt: skip
            info = json.dumps({"event": "task.queued", "attempt": claim.job_try, "delay": err.delay_s})
            record = self._again(job, _now_ms() + int(err.delay_s * 1000), kind="defer", info=info)
        except Exception as err:
            record = self._raised(job, err, start_ms)
        else:
            worker.jobs_complete += 1
            finished_ms = _now_ms()
            shown = "" if result is None or not worker.log_results else truncate(repr(result))
            arq_log.info("%6.2fs ← %s ● %s", (finished_ms - start_ms) / 1000, job.ref, shown)
            record = self._done(job, True, result, start_ms)
        finally:
            worker.job_tasks.pop(claim.job_id, None)
        if worker.on_job_end:
            await worker.on_job_end(ctx)
        return record

    async def _cancelled(self, job: _Job, start_ms: int) -> FinishRecord:
        worker, claim = self.worker, job.claim
        if claim.job_id in worker.aborting_tasks:
            worker.aborting_tasks.discard(claim.job_id)
            arq_log.info("%6.2fs ⊘ %s aborted", _since(start_ms), job.ref)
            return await self._aborted(job, start_ms)
        if worker.retry_jobs:
            # The worker is shutting down: the job goes back at its own score, ahead of later work.
            worker.jobs_retried += 1
            arq_log.info("%6.2fs ↻ %s cancelled, will be run again", _since(start_ms), job.ref)
            info = json.dumps({"event": "task.queued", "attempt": claim.job_try, "error": "worker shut down"})
            return self._again(job, claim.score, info=info)
        return self._raised(job, asyncio.CancelledError(), start_ms)

    def _raised(self, job: _Job, err: BaseException, start_ms: int) -> FinishRecord:
        worker, claim = self.worker, job.claim
        if worker.retry_jobs and isinstance(err, Retry):
            worker.jobs_retried += 1
            defer_ms = err.defer_score or 0
            arq_log.info("%6.2fs ↻ %s retrying job in %0.2fs", _since(start_ms), job.ref, defer_ms / 1000)
            info = json.dumps({"event": "task.retrying", "attempt": claim.job_try, "delay": defer_ms / 1000})
            return self._again(job, _now_ms() + defer_ms, info=info)
        if worker.retry_jobs and isinstance(err, RetryJob):
            worker.jobs_retried += 1
            arq_log.info("%6.2fs ↻ %s cancelled, will be run again", _since(start_ms), job.ref)
            info = json.dumps({"event": "task.retrying", "attempt": claim.job_try})
            return self._again(job, claim.score, info=info)
        worker.jobs_failed += 1
        arq_log.exception(
            "%6.2fs ! %s failed, %s: %s", _since(start_ms), job.ref, type(err).__name__, err,
            exc_info=err, extra={"extra": _extra(err)},
        )  # fmt: skip
        return self._done(job, False, err, start_ms)

    async def _aborted(self, job: _Job, start_ms: int) -> FinishRecord:
        """An aborted job's result: ARQ's CancelledError, or the batch's reason when a batch was cancelled."""
        claim = job.claim
        self.worker.jobs_failed += 1
        batch = split_job_id(claim.job_id)
        reason, code = None, None
        if batch is not None:
            meta = BATCH_KEY_PREFIX + batch[0]
            reason_b, code_b = await self.worker.pool.hmget(meta, ["cancelled", "cancel_code"])  # type: ignore[misc]
            reason = reason_b.decode() if reason_b else None
            code = code_b.decode() if code_b else None
        if reason is None:
            return self._done(job, False, asyncio.CancelledError(), start_ms)
        status = "timeout" if code == "t" else "cancelled"
        task = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
        result = {
            "task_id": batch[1] if batch else claim.job_id, "status": status, "output": "", "error": reason,
            "agent": task.get("agent", ""), "attempts": claim.job_try,
        }  # fmt: skip
        return self._done(job, True, result, start_ms)

    # -- records ------------------------------------------------------------------------------

    def _again(self, job: _Job, score: int, *, kind: str = "again", info: str = "") -> FinishRecord:
        keep = self._keep_in_progress_ms(job.function)
        batch = split_job_id(job.claim.job_id)
        return FinishRecord(kind, job.claim.job_id, score, 0, keep, info if batch else "")

    def _done(
        self, job: _Job, success: bool, result: Any, start_ms: int, *, job_try: int | None = None
    ) -> FinishRecord:
        return self._record(
            job.claim, job.name, job.args, job.kwargs, job.enqueued_ms, success, result, start_ms,
            job.function, job_try=job_try, ref=job.ref,
        )  # fmt: skip

    def _failed(
        self,
        claim: Claim,
        name: str,
        error: BaseException,
        *,
        job: _Job | None = None,
        start_ms: int | None = None,
        job_try: int | None = None,
    ) -> FinishRecord:
        """A job that ends without running (ARQ's ``finish_failed_job``: the worker's keep_result)."""
        self.worker.jobs_failed += 1
        args, kwargs, enqueued_ms = (job.args, job.kwargs, job.enqueued_ms) if job else ((), {}, 0)
        return self._record(
            claim, name, args, kwargs, enqueued_ms, False, error, start_ms or _now_ms(), None,
            job_try=job_try, ref=f"{claim.job_id}:{name}",
        )  # fmt: skip

    def _record(
        self,
        claim: Claim,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        enqueued_ms: int,
        success: bool,
        result: Any,
        start_ms: int,
        function: Function | CronJob | None,
        *,
        job_try: int | None,
        ref: str,
    ) -> FinishRecord:
        worker = self.worker
        keep_forever, keep_s = worker.keep_result_forever, worker.keep_result_s
        if function is not None:
            keep_forever = (
                keep_forever if function.keep_result_forever is None else function.keep_result_forever
            )
            keep_s = keep_s if function.keep_result_s is None else function.keep_result_s
        tries = claim.job_try if job_try is None else job_try
        payload = b""
        if keep_forever or keep_s > 0:
            payload = serialize_result(
                name, args, kwargs, tries, enqueued_ms, success, result, start_ms, _now_ms(), ref,
                worker.queue_name, job_id=claim.job_id, serializer=worker.job_serializer,
            ) or b""  # fmt: skip
        ttl_ms = -1 if keep_forever else int(keep_s * 1000)
        info = ""
        if split_job_id(claim.job_id) is not None:
            info = _info_for(success, result, tries)
        if name == JOB_NAME:
            self._task_ended(claim.job_id, args, kwargs, success, result, tries, start_ms)
        return FinishRecord(
            "done", claim.job_id, payload, ttl_ms if payload else 0, self._keep_in_progress_ms(function), info
        )

    def _task_ended(
        self,
        job_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        success: bool,
        result: Any,
        tries: int,
        start_ms: int,
    ) -> None:
        """Count a task in the worker's metrics, however it ended: here, since every final record of a
        job passes through ``_record`` once, and a job aborted or over ARQ's timeout never returns."""
        runtime: WorkerRuntime | None = self.worker.ctx.get(RUNTIME_KEY)
        if runtime is None or runtime.metrics is None:
            return
        task = args[0] if args else {}
        if isinstance(task, str):
            try:
                task = json.loads(task)
            except ValueError:
                task = {}
        agent = kwargs.get("agent") or (task.get("agent") if isinstance(task, dict) else None)
        ended = result_from_outcome(
            job_id, success, result, attempts=tries, started_ms=start_ms, finished_ms=_now_ms(),
            agent=agent if isinstance(agent, str) else "",
        )  # fmt: skip
        runtime.finished(ended)

    @staticmethod
    def _keep_in_progress_ms(function: Function | CronJob | None) -> int:
        # ARQ keeps a cron job's in-progress key after it ends, against a late duplicate of the tick
        # (read from arq.worker at each use, as ARQ does).
        keep_s: float = getattr(arq.worker, "keep_cronjob_progress")  # noqa: B009  # not in its __all__
        return int(keep_s * 1000) if isinstance(function, CronJob) else 0


def _info_for(success: bool, result: Any, job_try: int) -> str:
    if success and isinstance(result, dict) and result.get("status") in _STATUS_CODES:
        return batch_info(str(result["status"]), job_try, result=result)
    if success:
        return batch_info("success", job_try)
    if isinstance(result, TimeoutError):
        return batch_info("timeout", job_try, error=f"timed out: {result}" if str(result) else "timed out")
    if isinstance(result, asyncio.CancelledError):
        return batch_info("cancelled", job_try, error=str(result) or "aborted")
    return batch_info("failed", job_try, error=f"{type(result).__name__}: {result}")


def _extra(err: BaseException) -> Any:
    """ARQ logs an exception's ``extra`` (called, if it is a method) with the failure."""
    extra = getattr(err, "extra", None)
    return extra() if callable(extra) else extra


def _since(ms: int) -> float:
    return (_now_ms() - ms) / 1000
