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
from typing import TYPE_CHECKING, TypedDict

from coditect.execution.context import no_slot

if TYPE_CHECKING:
    from arq.connections import ArqRedis

__all__ = ["JOB_RUN_KEY", "JobContext", "JobRun", "WorkerContext"]

JOB_RUN_KEY = "coditect_job"


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


class JobContext(WorkerContext, total=False):
    """``ctx`` as a job function receives it."""

    job_id: str
    job_try: int
    enqueue_time: datetime
    score: int
    coditect_job: JobRun
