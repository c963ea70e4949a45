"""The job context: what a job function finds in ``ctx``, typed.

ARQ passes every job function a dict: the worker's ``ctx`` (whatever ``on_startup`` put there, plus
``redis``) and, per job, ``job_id``, ``job_try``, ``enqueue_time`` and ``score``. coditect's engine
adds ``coditect_job``: the job's hold on its worker slot and, for a task of a batch, where it sits.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Final, TypedDict

from coditect.execution.context import no_slot

if TYPE_CHECKING:
    import asyncio

    from arq.connections import ArqRedis

    from coditect.agents import AgentRegistry
    from coditect.engine.runtime import WorkerRuntime
    from coditect.engine.worker import CoditectWorker
    from coditect.execution.executor import TaskExecutor
    from coditect.settings import Settings

__all__ = [
    "AGENTS_KEY",
    "EMBEDDED_KEY",
    "EXECUTOR_KEY",
    "JOB_RUN_KEY",
    "RUNTIME_KEY",
    "SCHEDULER_KEY",
    "SETTINGS_KEY",
    "WORKER_KEY",
    "JobContext",
    "JobRun",
    "WorkerContext",
]

# coditect's keys in ctx: the engine sets the worker's and each job's; coditect's start-up sets the rest.
WORKER_KEY: Final = "coditect_worker"
JOB_RUN_KEY: Final = "coditect_job"
SETTINGS_KEY: Final = "coditect_settings"
AGENTS_KEY: Final = "coditect_agents"
EMBEDDED_KEY: Final = "coditect_embedded"
EXECUTOR_KEY: Final = "coditect_executor"
RUNTIME_KEY: Final = "coditect_runtime"
SCHEDULER_KEY: Final = "coditect_scheduler"


@dataclass(frozen=True, slots=True)
class JobRun:
    """The engine's side of one job: its slot, and its batch, task and delegation depth if any."""

    job_id: str
    job_try: int
    idle: Callable[[], AbstractAsyncContextManager[None]] = field(default=no_slot)
    batch_id: str | None = None
    task_id: str | None = None
    depth: int = 0
    worker: str = ""
    budget: bool = False  # the batch has a budget: reserve the task's estimate before it runs


class WorkerContext(TypedDict, total=False):
    """The worker-wide part of ``ctx``; ``on_startup`` hooks may add keys of their own."""

    redis: ArqRedis
    coditect_worker: CoditectWorker
    coditect_settings: Settings
    coditect_agents: AgentRegistry | None
    coditect_embedded: bool
    coditect_executor: TaskExecutor
    coditect_runtime: WorkerRuntime
    coditect_scheduler: asyncio.Task[None]


class JobContext(WorkerContext, total=False):
    """``ctx`` as a job function receives it."""

    job_id: str
    job_try: int
    enqueue_time: datetime
    score: int
    coditect_job: JobRun
