"""What the executor benchmark runs on: its Redis, worker pools, and batches whose results are checked.

Nothing here measures a figure by itself; ``executor_performance.py`` composes these pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis
from arq.connections import ArqRedis, RedisSettings, create_pool

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.settings import Settings
from tests.support.redis_server import RedisServer
from tests.support.workers import WorkerProcess

__all__ = [
    "BIN_DIR",
    "REPO_ROOT",
    "BatchRun",
    "Bench",
    "WorkerPool",
    "WrongResults",
    "check_results",
    "fresh_batch",
    "make_tasks",
    "rss_mb",
    "run_arq_jobs",
    "run_batch",
    "started_redis",
    "unique_batch_id",
    "wait_for_line",
    "warm_then_measure",
]

_T = TypeVar("_T")

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
ENV_PREFIXES = ("CODITECT_", "ANTHROPIC_", "OPENAI_", "BENCH_ARQ_")
WORKER_START_TIMEOUT_S = 90.0  # ten workers importing at once on two cores take several seconds
BATCH_TIMEOUT_S = 120.0
ARQ_RESULT_TIMEOUT_S = 120.0
RESUME_SETTLE_S = 0.2

ENGINE_LINE = "engine:"
NO_JOB_LINES_OPTION = ("--custom-log-dict", "benchmarks.worker_logs.NO_JOB_LINES")
ARQ_BASELINE_READY_LINE = "arq baseline worker ready"  # benchmarks.arq_baseline.READY_LINE


class WrongResults(Exception):
    """The work measured is not the work asked for: a wrong count, a wrong id, a wrong status."""


# -- the environment ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bench:
    """The run's context: its Redis, whether it is a quick run, and the environment for workers."""

    redis_url: str
    quick: bool

    def pick(self, full: _T, quick: _T) -> _T:
        """``full`` normally, ``quick`` under ``--quick``."""
        return quick if self.quick else full

    def base_env(self) -> dict[str, str]:
        """This process's environment without any CODITECT_*/provider/BENCH_ARQ_* variable."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
        return {**env, "PYTHONPATH": str(REPO_ROOT)}

    def redis_cpu_s(self) -> float:
        with redis.Redis.from_url(self.redis_url) as client:
            info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def settings(self) -> Settings:
        return Settings(_env_file=None, redis_url=self.redis_url)

    @asynccontextmanager
    async def orchestrator(self) -> AsyncIterator[ProjectOrchestrator]:
        async with ProjectOrchestrator(self.settings()) as orch:
            yield orch

    @asynccontextmanager
    async def arq_client(self) -> AsyncIterator[ArqRedis]:
        """An ARQ client as users create one: ``create_pool`` with its defaults (pickle, arq:queue)."""
        pool = await create_pool(RedisSettings.from_dsn(self.redis_url))
        try:
            yield pool
        finally:
            await pool.aclose(close_connection_pool=True)

    def coditect_workers(self, count: int, **env: str) -> WorkerPool:
        """``arq coditect.jobs.WorkerSettings`` processes; ``env`` adds CODITECT_* settings.

        They log no line per job (``benchmarks.worker_logs``), as the bare ARQ baseline.
        """
        command = [str(BIN_DIR / "arq"), "coditect.jobs.WorkerSettings", *NO_JOB_LINES_OPTION]
        return self._coditect_pool(count, command, env)

    def coditect_workers_with_job_lines(self, count: int, **env: str) -> WorkerPool:
        """The same workers with ARQ's default logging: an INFO line as each job starts and ends."""
        return self._coditect_pool(count, None, env)

    def _coditect_pool(self, count: int, command: list[str] | None, env: dict[str, str]) -> WorkerPool:
        full_env = {**self.base_env(), "CODITECT_REDIS_URL": self.redis_url, **env}
        return WorkerPool([WorkerProcess(full_env, command) for _ in range(count)])

    def arq_workers(
        self, count: int, *, max_jobs: int | None = None, poll_delay_s: float | None = None
    ) -> WorkerPool:
        """Bare ARQ workers (``benchmarks.arq_baseline``): ARQ's defaults except what is given here."""
        env = {**self.base_env(), "BENCH_ARQ_REDIS_URL": self.redis_url}
        if max_jobs is not None:
            env["BENCH_ARQ_MAX_JOBS"] = str(max_jobs)
        if poll_delay_s is not None:
            env["BENCH_ARQ_POLL_DELAY_S"] = str(poll_delay_s)
        command = [
            str(BIN_DIR / "arq"), "benchmarks.arq_baseline.WorkerSettings",
            "--custom-log-dict", "benchmarks.arq_baseline.LOG_CONFIG",
        ]  # fmt: skip
        return WorkerPool(
            [WorkerProcess(env, command, ready_line=ARQ_BASELINE_READY_LINE) for _ in range(count)]
        )


@contextmanager
def bench_session(prefix: str, *, quick: bool) -> Iterator[tuple[Bench, RedisServer]]:
    """A benchmark run's surroundings: only its own settings in the environment (its workers inherit
    it), a fresh working directory without any .env, and its own redis-server."""
    for name in [name for name in os.environ if name.startswith(ENV_PREFIXES)]:
        del os.environ[name]
    with (
        tempfile.TemporaryDirectory(prefix=prefix) as workdir,
        contextlib.chdir(workdir),
        started_redis(Path(workdir) / "redis") as server,
    ):
        yield Bench(redis_url=server.url, quick=quick), server


@contextmanager
def started_redis(workdir: Path) -> Iterator[RedisServer]:
    """The benchmark's own redis-server on a free port (never the default 6379), stopped on exit."""
    server = RedisServer(workdir)
    if server.port == 6379:
        raise RuntimeError("refusing to use port 6379")
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except Exception:
            server.kill()


# -- worker processes --------------------------------------------------------------------------


class WorkerPool:
    """Worker processes started together (each until its ready line) and always stopped together.

    A pool that is not being measured can be paused (SIGSTOP) while it is idle, so that figures
    comparing several pools interleave their repetitions without idle pollers stealing CPU.
    """

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers]

    async def __aenter__(self) -> WorkerPool:
        started = False
        try:
            async with asyncio.TaskGroup() as group:
                for worker in self.workers:
                    group.create_task(worker.start(WORKER_START_TIMEOUT_S))
            started = True
        finally:
            if not started:
                await self.stop()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._continue()  # a stopped process would only see SIGTERM after SIGCONT
        await asyncio.gather(*(worker.stop() for worker in self.workers), return_exceptions=True)

    def pause(self, workers: Sequence[WorkerProcess] | None = None) -> None:
        for worker in self.workers if workers is None else workers:
            worker.signal(signal.SIGSTOP)

    async def resume(self) -> None:
        """Continue every worker, and give them a moment to catch up with their timers."""
        self._continue()
        await asyncio.sleep(RESUME_SETTLE_S)

    def _continue(self) -> None:
        for worker in self.workers:
            worker.signal(signal.SIGCONT)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[WorkerPool]:
        """Resume the pool for the duration of the block, then pause it again."""
        await self.resume()
        try:
            yield self
        finally:
            self.pause()


async def wait_for_line(worker: WorkerProcess, text: str, timeout_s: float) -> None:
    """Until ``worker`` has logged a line containing ``text`` (checked every millisecond)."""
    try:
        async with asyncio.timeout(timeout_s):
            # WorkerProcess signals only its ready line: other lines are polled for.
            while not any(text in line for line in worker.lines):  # noqa: ASYNC110
                await asyncio.sleep(0.001)
    except TimeoutError:
        last = "\n".join(worker.lines[-20:])
        raise RuntimeError(f"worker {worker.pid} logged no {text!r} line in {timeout_s} s:\n{last}") from None


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """A process's resident memory (or ``VmHWM``, its peak) from /proc, in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


# -- runs and their checks ---------------------------------------------------------------------


def make_tasks(count: int, prefix: str) -> list[AgentTask]:
    return [AgentTask(id=f"{prefix}{i}", title=f"benchmark task {i}") for i in range(count)]


def unique_batch_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True, slots=True)
class BatchRun:
    """One checked batch: how long it took, where that time went, and the tasks each worker ran.

    ``last_started_s`` and ``last_finished_s`` are the latest task start and end the executor
    recorded, in seconds after the call (wall clock, the same machine).
    """

    elapsed_s: float
    last_started_s: float
    last_finished_s: float
    per_worker: dict[int, int]

    def split(self) -> str:
        return "/".join(str(n) for n in sorted(self.per_worker.values(), reverse=True))

    def timeline(self) -> str:
        return (
            f"last task started +{self.last_started_s:.2f} s, finished +{self.last_finished_s:.2f} s, "
            f"all results in hand +{self.elapsed_s:.2f} s"
        )


async def warm_then_measure(reps: int, once: Callable[[], Awaitable[_T]]) -> tuple[_T, list[_T]]:
    """One warm-up run, then ``reps`` measured ones.

    The warm-up takes the first-use costs of freshly started processes (a first batch on new workers
    was up to ~45 % slower in trial runs); it is reported apart and never enters a median.
    """
    warmup = await once()
    return warmup, [await once() for _ in range(reps)]


async def fresh_batch(orch: ProjectOrchestrator, count: int, label: str) -> BatchRun:
    """An emptied Redis, then a checked batch of ``count`` new tasks."""
    await orch.redis.flushdb()
    return await run_batch(orch, make_tasks(count, label), unique_batch_id(label))


async def run_batch(orch: ProjectOrchestrator, tasks: Sequence[AgentTask], batch_id: str) -> BatchRun:
    """``execute_tasks_parallel`` timed from the call to the results in hand, then checked."""
    wall_start = time.time()
    started = time.perf_counter()
    results = await orch.execute_tasks_parallel(tasks, batch_id=batch_id, timeout_s=BATCH_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    check_results(tasks, results)
    per_worker = Counter(int((result.worker or ":0").rsplit(":", 1)[1]) for result in results)
    last_started = max(result.started_at.timestamp() for result in results if result.started_at)
    last_finished = max(result.finished_at.timestamp() for result in results if result.finished_at)
    return BatchRun(elapsed, last_started - wall_start, last_finished - wall_start, dict(per_worker))


def check_results(tasks: Sequence[AgentTask], results: Sequence[ExecutionResult]) -> None:
    """Every task has its result, in order, successful, and produced by the offline provider."""
    if len(results) != len(tasks):
        raise WrongResults(f"{len(tasks)} tasks but {len(results)} results")
    for task, result in zip(tasks, results, strict=True):
        if result.task_id != task.id:
            raise WrongResults(f"a result for task {result.task_id!r} where {task.id!r} was expected")
    statuses = Counter(result.status.value for result in results)
    if statuses != {ExecutionStatus.SUCCESS.value: len(tasks)}:
        first = next(result for result in results if not result.succeeded)
        raise WrongResults(f"statuses {dict(statuses)}; first: task {first.task_id}: {first.error}")
    unexpected = [
        r.task_id for r in results if r.provider != "offline" or not r.output.startswith("[offline")
    ]
    if unexpected:
        raise WrongResults(f"{len(unexpected)} result(s) not from the offline provider, e.g. {unexpected[0]}")


async def run_arq_jobs(arq: ArqRedis, count: int, result_poll_s: float) -> float:
    """ARQ as its docs show: gathered ``enqueue_job``, then gathered ``Job.result()``; checked."""
    started = time.perf_counter()
    jobs = await asyncio.gather(*(arq.enqueue_job("noop", i) for i in range(count)))
    if any(job is None for job in jobs):
        raise WrongResults("ARQ refused to enqueue a job (duplicate id)")
    values = await asyncio.gather(
        *(
            job.result(timeout=ARQ_RESULT_TIMEOUT_S, poll_delay=result_poll_s)
            for job in jobs
            if job is not None
        )
    )
    elapsed = time.perf_counter() - started
    if values != list(range(count)):
        wrong = sum(1 for i, value in enumerate(values) if value != i)
        raise WrongResults(f"{wrong} of {count} ARQ results differ from their job's argument")
    return elapsed
