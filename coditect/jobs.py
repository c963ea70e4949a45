"""ARQ job functions and ``WorkerSettings``: ``arq coditect.jobs.WorkerSettings`` starts a worker.

What coditect does with each ARQ outcome:

- The executor returns a result for every task failure, so a job almost never raises.
- A transient provider error (429, 529, 5xx, connection, timeout) raises ``arq.worker.Retry`` with a
  delay that honours retry-after, else exponential backoff; the job goes back to the queue and the
  worker slot is free while it waits. On the last try the job returns the failed result, with
  ``attempts`` and the last error.
- A task over its timeout is cancelled by the executor and returns status ``timeout``; ARQ's own job
  timeout (ours plus a grace period) is only a backstop.
- A payload that is not JSON, or not a task, fails that job with a clear error and never runs.
- ARQ counts every start in ``job_try``, crashes included: a task whose worker died ``max_tries``
  times ends ``failed`` ("max N retries exceeded").

``WorkerSettings`` is built from ``CODITECT_*`` when first looked up (importing this module reads no
environment). Subclass it to add functions, cron jobs, hooks or options: the subclass keeps
coditect's engine, queue, serializer and job (``coditect.engine.create.WorkerSettingsBase``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import TYPE_CHECKING, Any, cast

from arq.worker import Retry, func
from pydantic import ValidationError

from coditect.agents import AgentRegistry
from coditect.connections import redis_settings_from
from coditect.engine.arq_compat import SETTINGS_MARK, install
from coditect.engine.context import (
    AGENTS_KEY,
    EMBEDDED_KEY,
    EXECUTOR_KEY,
    JOB_RUN_KEY,
    RUNTIME_KEY,
    SCHEDULER_KEY,
    SETTINGS_KEY,
    WORKER_KEY,
    JobContext,
    JobRun,
    WorkerContext,
)
from coditect.engine.create import WorkerSettingsBase
from coditect.engine.runtime import BudgetRefused, WorkerRuntime, refused_result
from coditect.errors import BudgetDeferred, CapacityDeferred
from coditect.execution.executor import TaskExecutor
from coditect.gc_tuning import freeze_after_startup
from coditect.keys import JOB_NAME
from coditect.llm.limits import RateLimiter
from coditect.logs import ensure_worker_logging
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.serialization import job_deserializer, job_serializer
from coditect.settings import Settings

if TYPE_CHECKING:
    from arq.typing import WorkerCoroutine

__all__ = [
    "AGENTS_KEY",
    "EMBEDDED_KEY",
    "EXECUTOR_KEY",
    "JOB_NAME",
    "RUNTIME_KEY",
    "SCHEDULER_KEY",
    "SETTINGS_KEY",
    "WORKER_KEY",
    "WorkerSettings",  # noqa: F822  # built on first access by the module __getattr__ below
    "execute_task",
    "job_deserializer",
    "job_serializer",
    "retry_delay_s",
    "worker_options",
    "worker_settings_class",
]

logger = logging.getLogger(__name__)

JOB_TIMEOUT_GRACE_S = 5.0


async def startup(ctx: WorkerContext) -> None:
    """Create the worker's one TaskExecutor (and so its one HTTP pool); refuse a plain ARQ worker."""
    if ctx.get(WORKER_KEY) is None:
        raise RuntimeError(
            "coditect's job needs coditect's engine, but this is a plain arq.worker.Worker: start it with "
            "'coditect worker' or 'arq coditect.jobs.WorkerSettings', or build it with "
            "coditect.engine.create.create_worker()"
        )
    settings: Settings = ctx.get(SETTINGS_KEY) or Settings()
    ctx[SETTINGS_KEY] = settings
    agents = ctx.get(AGENTS_KEY) or AgentRegistry.from_settings(settings)
    limiter = RateLimiter.from_settings(ctx["redis"], settings)  # a bad limits file stops the worker here
    executor = TaskExecutor(settings, agents=agents, limiter=limiter)
    executor.llm_factory.create(settings.provider)  # open the default provider's client now: fail early
    ctx[EXECUTOR_KEY] = executor
    runtime = ctx[RUNTIME_KEY] = WorkerRuntime(ctx["redis"], executor, worker=ctx[WORKER_KEY])
    if settings.metrics_port is not None and not ctx.get(EMBEDDED_KEY):
        from coditect.engine.metrics import WorkerMetrics

        runtime.metrics = WorkerMetrics()
        runtime.metrics_server = runtime.metrics.serve(settings.metrics_port)
        runtime.start_gauges()
        logger.info("metrics on port %d (/metrics)", runtime.metrics_server.port)
    if not ctx.get(EMBEDDED_KEY):
        ensure_worker_logging(settings)  # after the SDK import, which may add handlers of its own
        if settings.schedule_file is not None:
            ctx[SCHEDULER_KEY] = _start_scheduler(ctx, settings, agents)
        freeze_after_startup()  # the process is the worker's: nobody else's objects are frozen
    logger.info(
        "coditect worker ready: queue %s, provider %s, max_jobs %d",
        settings.queue_name,
        settings.provider,
        settings.max_jobs,
    )


def _start_scheduler(ctx: WorkerContext, settings: Settings, agents: AgentRegistry) -> asyncio.Task[None]:
    """This worker's part in the scheduled batches (every worker with the setting takes part)."""
    from coditect.client.batches import BatchStore
    from coditect.engine.schedule import Scheduler, load_schedules

    assert settings.schedule_file is not None
    schedules = load_schedules(settings.schedule_file, agents)  # a bad file stops the worker at start
    store = BatchStore(
        ctx["redis"],
        queue_name=settings.queue_name,
        keep_result_s=settings.keep_result_s,
        events_max_len=settings.events_max_len,
    )
    names = ", ".join(entry.schedule.name for entry in schedules)
    logger.info("schedules from %s: %s", settings.schedule_file, names or "none")
    return asyncio.create_task(Scheduler(store, schedules).run(), name="coditect-scheduler")


async def shutdown(ctx: WorkerContext) -> None:
    scheduler: asyncio.Task[None] | None = ctx.pop(SCHEDULER_KEY, None)
    if scheduler is not None:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)
    ctx.pop(EXECUTOR_KEY, None)
    runtime: WorkerRuntime | None = ctx.pop(RUNTIME_KEY, None)
    if runtime is not None:
        await runtime.aclose()


def retry_delay_s(job_try: int, retry_after_s: float | None, settings: Settings) -> float:
    """Seconds to wait before try ``job_try + 1``: the provider's retry-after, else jittered backoff."""
    if retry_after_s is not None:
        return retry_after_s
    backoff: float = min(settings.retry_backoff_s * 2.0 ** (job_try - 1), settings.retry_backoff_max_s)
    return backoff * random.uniform(0.75, 1.0)


async def execute_task(
    ctx: JobContext, task: dict[str, Any] | str, agent: str | None = None, mode: str | None = None
) -> dict[str, Any]:
    """Run one task (a dict or its JSON text) and return its ``ExecutionResult`` as a JSON dict."""
    settings: Settings = ctx[SETTINGS_KEY]
    job_try: int = ctx.get("job_try", 1)
    try:
        parsed = (
            AgentTask.model_validate_json(task) if isinstance(task, str) else AgentTask.model_validate(task)
        )
    except ValidationError as err:
        return _invalid_payload(task, err, job_try).to_json_dict()
    runtime: WorkerRuntime = ctx[RUNTIME_KEY]
    run: JobRun | None = ctx.get(JOB_RUN_KEY)
    job_id: str | None = ctx.get("job_id")
    run_context = await runtime.run_context(parsed, run)
    if run is not None and run.budget:
        reserved = await runtime.reserve(run, parsed, agent, mode, dict(run_context.inputs))
        if isinstance(reserved, BudgetRefused):
            logger.info("task %s: refused by its batch's budget, not run: %s", parsed.id, reserved.reason)
            refused = refused_result(parsed, reserved, job_try)
            if job_id is not None and job_try > 1:
                refused = await runtime.with_prior_usage(job_id, refused)  # what its attempts spent counts
            return refused.to_json_dict()
        if reserved is not None:
            raise BudgetDeferred(reserved)
    try:
        result = await runtime.executor.execute(parsed, agent, mode, run=run_context)
    except CapacityDeferred as err:
        if runtime.metrics is not None:
            runtime.metrics.rate_limit_deferred(err.provider, err.model, err.delay_s)
        raise
    result.attempts = job_try
    if result.retryable and job_try < settings.max_tries:
        delay = retry_delay_s(job_try, result.retry_after_s, settings)
        logger.info(
            "task %s: try %d failed (%s), retrying in %.2f s", parsed.id, job_try, result.error, delay
        )
        if job_id is not None:
            await runtime.keep_usage(job_id, result)
        runtime.retried(result.agent)
        raise Retry(defer=delay)
    if job_id is not None and job_try > 1:
        result = await runtime.with_prior_usage(job_id, result)
    return result.to_json_dict()  # the engine counts it in the metrics, as every task that ends


def _invalid_payload(task: object, err: ValidationError, job_try: int) -> ExecutionResult:
    raw = task
    if isinstance(task, str):
        try:
            raw = json.loads(task)
        except ValueError:
            raw = None
    task_id = raw.get("id") if isinstance(raw, dict) else None
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "task"
    return ExecutionResult(
        task_id=task_id if isinstance(task_id, str) else "?",
        status=ExecutionStatus.FAILED,
        error=f"invalid task payload, not executed: {field}: {first['msg']}",
        attempts=job_try,
    )


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for an ARQ ``Worker`` serving coditect's queue with ``settings``."""
    return {
        "functions": [
            func(
                # ARQ hands every job a plain dict; execute_task reads it as the JobContext it is.
                cast("WorkerCoroutine", execute_task),
                name=JOB_NAME,
                timeout=settings.job_timeout_s + JOB_TIMEOUT_GRACE_S,
                max_tries=settings.max_tries,
            )
        ],
        "queue_name": settings.queue_name,
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout_s + JOB_TIMEOUT_GRACE_S,
        "max_tries": settings.max_tries,
        "keep_result": settings.keep_result_s,
        "poll_delay": settings.poll_interval_s,
        "health_check_interval": settings.health_check_interval_s,
        "job_completion_wait": settings.shutdown_grace_s,
        "allow_abort_jobs": True,
        "job_serializer": job_serializer,
        "job_deserializer": job_deserializer,
        "log_results": False,
        "on_startup": startup,
        "on_shutdown": shutdown,
    }


def worker_settings_class(settings: Settings) -> type[WorkerSettingsBase]:
    """An ARQ ``WorkerSettings`` class for ``settings``, every attribute on the class itself."""
    redis_settings = None if settings.embedded else redis_settings_from(settings)
    attributes = {**worker_options(settings), "redis_settings": redis_settings, SETTINGS_MARK: settings}
    doc = "ARQ worker settings for coditect, read from CODITECT_* when first imported."
    return type(
        "WorkerSettings", (WorkerSettingsBase,), {"__module__": __name__, "__doc__": doc, **attributes}
    )


def __getattr__(name: str) -> Any:
    # ``arq coditect.jobs.WorkerSettings`` looks the class up by name: build it then, so that
    # importing this module never reads the environment, and route ARQ's CLI to coditect's engine.
    if name == "WorkerSettings":
        cls = worker_settings_class(Settings())
        install()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
