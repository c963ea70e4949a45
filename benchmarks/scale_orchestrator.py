"""The orchestrator of the ``scale`` figure, alone in its process so that its memory and CPU are its own.

    python -m benchmarks.scale_orchestrator REDIS_URL TASKS {run_batch,as_completed} BATCH_ID

Builds ``TASKS`` zero-latency tasks, then either ``await orch.run_batch(tasks)`` (every result held,
checked in order) or ``await orch.submit(tasks)`` followed by ``async for result in
orch.as_completed(batch_id)`` (each result checked and dropped). Prints one JSON object:

- ``elapsed_s``: from the call (``run_batch``, or ``submit``) to the last result in hand;
- ``submit_s``: from the call until ``BatchStore.submit`` returned (every chunk sent);
- ``first_started_s`` / ``last_finished_s``: the earliest task start and latest task end that the
  results record, in seconds after the call (wall clock, the same machine);
- ``cpu_s``, ``submit_cpu_s``, ``wait_cpu_s``: this process's CPU (user + system) from the call to
  the end, up to the end of ``BatchStore.submit`` (the graph checks and the enqueue included), and
  after it (the waiter following the batch and reading results); ``gc_cpu_s`` and ``wait_gc_cpu_s``:
  how much of ``cpu_s`` and ``wait_cpu_s`` the cyclic garbage collector took (``gc.callbacks``);
- ``rss_before_mb``: resident memory at the call (the interpreter, the imports and the tasks built);
  ``peak_rss_mb``: the process's high-water mark, ``VmHWM``. Not ``getrusage(RUSAGE_SELF).ru_maxrss``
  (also printed, as ``ru_maxrss_mb``): on Linux it survives ``execve``, so it starts at the RSS of
  the process that forked this one (the benchmark, 100-200 MB after a 100k run) and overstated a
  10k run's peak by up to 2.5x in trial runs.

Exits 2 with a message on stderr when a result is missing, repeated, or not a success of the
offline provider.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find benchmarks/

from coditect.client.batches import Submitted
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.settings import Settings

TIMEOUT_S = 600.0
PREFIX = "s"


class WrongResult(Exception):
    pass


def _status_mb(field_name: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, in MB (10^6 bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def _check(result: ExecutionResult) -> int:
    """The task's number, once the result is a success of the offline provider."""
    if result.status is not ExecutionStatus.SUCCESS or result.provider != "offline":
        raise WrongResult(f"task {result.task_id}: {result.status.value}, {result.provider}: {result.error}")
    return int(result.task_id[len(PREFIX) :])


class GcClock:
    """CPU seconds spent in the interpreter's cyclic garbage collector (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.cpu_s += time.process_time() - self._started


async def measure(redis_url: str, count: int, mode: str, batch_id: str) -> dict[str, Any]:
    tasks = [AgentTask(id=f"{PREFIX}{i}", title=f"benchmark task {i}") for i in range(count)]
    marks: dict[str, float] = {}
    gc_clock = GcClock()
    gc.callbacks.append(gc_clock)
    async with ProjectOrchestrator(Settings(_env_file=None, redis_url=redis_url)) as orch:
        store = orch.store
        submit = store.submit

        async def timed_submit(*args: Any, **kwargs: Any) -> Submitted:
            submitted = await submit(*args, **kwargs)
            marks["submit_cpu"], marks["submit"] = time.process_time(), time.perf_counter()
            marks["submit_gc_cpu"] = gc_clock.cpu_s
            return submitted

        store.submit = timed_submit  # type: ignore[method-assign]
        seen = bytearray(count)
        first_started, last_finished = float("inf"), 0.0
        rss_before = _status_mb("VmRSS")
        cpu_start, wall_start, started = time.process_time(), time.time(), time.perf_counter()
        gc_start = gc_clock.cpu_s
        if mode == "run_batch":
            results = await orch.run_batch(tasks, timeout_s=TIMEOUT_S, batch_id=batch_id)
            elapsed = time.perf_counter() - started
            cpu_end, gc_end = time.process_time(), gc_clock.cpu_s
            for task, result in zip(tasks, results, strict=True):
                if result.task_id != task.id:
                    raise WrongResult(f"result of {result.task_id} where {task.id} was expected")
                seen[_check(result)] += 1
                first_started, last_finished = _span(result, first_started, last_finished)
            del results
        else:
            await orch.submit(tasks, batch_id=batch_id)
            async for result in orch.as_completed(batch_id, timeout_s=TIMEOUT_S):
                seen[_check(result)] += 1
                first_started, last_finished = _span(result, first_started, last_finished)
            elapsed = time.perf_counter() - started
            cpu_end, gc_end = time.process_time(), gc_clock.cpu_s
        if seen.count(1) != count:
            raise WrongResult(
                f"{seen.count(0)} task(s) without a result, {count - seen.count(0) - seen.count(1)} twice"
            )
    return {
        "tasks": count,
        "mode": mode,
        "elapsed_s": elapsed,
        "submit_s": marks["submit"] - started,
        "first_started_s": first_started - wall_start,
        "last_finished_s": last_finished - wall_start,
        "cpu_s": cpu_end - cpu_start,
        "submit_cpu_s": marks["submit_cpu"] - cpu_start,
        "wait_cpu_s": cpu_end - marks["submit_cpu"],
        "gc_cpu_s": gc_end - gc_start,
        "wait_gc_cpu_s": gc_end - marks["submit_gc_cpu"],
        "rss_before_mb": rss_before,
        "peak_rss_mb": _status_mb("VmHWM"),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
    }


def _span(result: ExecutionResult, first: float, last: float) -> tuple[float, float]:
    if result.started_at is None or result.finished_at is None:
        raise WrongResult(f"task {result.task_id}: no start or end time")
    return min(first, result.started_at.timestamp()), max(last, result.finished_at.timestamp())


def main(argv: list[str]) -> int:
    redis_url, count, mode, batch_id = argv[0], int(argv[1]), argv[2], argv[3]
    if mode not in ("run_batch", "as_completed"):
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    try:
        figures = asyncio.run(measure(redis_url, count, mode, batch_id))
    except WrongResult as err:
        print(f"WRONG RESULTS: {err}", file=sys.stderr)
        return 2
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
