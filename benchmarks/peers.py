"""coditect beside its peers (SAQ, Dramatiq, taskiq, ARQ) in one run, on one private Redis.

    .venv/bin/python benchmarks/peers.py [--setup] [--quick] [--only a b c] [--libraries NAME ...]

The peers live in their own virtualenv, ``.venv-peers`` (made on first use, or anew with ``--setup``,
from ``benchmarks/peer_apps/requirements.txt``). Starts its own ``redis-server`` on a free port, then
for each figure every library's workers, each with its own CLI, at the same concurrency and without a
log line per job, and a client process per library (``benchmarks.peer_apps.driver``):

a. 5,000 no-op jobs, 2 workers x concurrency 100: makespan from the first enqueue to the last result
   read back, and CPU seconds of all processes (workers, client, Redis) per 1,000 jobs;
b. one job's round trip, 1 idle worker, 200 sequential jobs: p50 / p99 / max;
c. 1,000 jobs x 1 s sleep, 2 workers x concurrency 500: makespan (ideal 1.0 s).

Each figure: a warm-up run of every library, then the repetitions, interleaved across libraries, with
only the measured library's workers running (the others SIGSTOPped) and Redis flushed before each run.
Every result is checked (count and values). Prints a table per figure and writes
``test-results/peers.json`` (every raw value) and ``test-results/peers.md``. Exit status 2 when a
library did the wrong work or could not run, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find benchmarks/, tests/

from benchmarks.harness import BIN_DIR, REPO_ROOT, WORKER_START_TIMEOUT_S, Bench, bench_session
from benchmarks.metrics import CLOCK_TICKS, CpuSample
from benchmarks.peer_apps.common import READY_LINE
from benchmarks.report import loadavg, machine_info
from tests.support.workers import WorkerProcess

PEERS_VENV = REPO_ROOT / ".venv-peers"
REQUIREMENTS = REPO_ROOT / "benchmarks" / "peer_apps" / "requirements.txt"
DRIVER_TIMEOUT_S = 300.0
RESUME_SETTLE_S = (
    1.0  # after a pause of up to a minute: heartbeats and timers catch up before the clock starts
)
TUNED_POLL_S = 0.01
WARMUP_ROUND_TRIPS = {False: 20, True: 5}  # figure b's warm-up on each fresh worker
EXIT_OK, EXIT_FAILED = 0, 2


# -- the libraries -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Library:
    """How one library's workers are started, which client drives it, and how that client waits."""

    name: str
    driver: str  # a key of benchmarks.peer_apps.driver.CLIENTS
    peers_venv: bool
    waits: str  # how the client reads results back, for the table
    worker_args: Callable[[int], list[str]]  # the command after the executable, for a concurrency
    executable: str
    env: dict[str, str] = field(default_factory=dict)
    sequential_cap: dict[bool, int] | None = None  # round trips per repetition in figure b {quick: n}

    def python(self) -> Path:
        return PEERS_VENV / "bin" / "python" if self.peers_venv else BIN_DIR / "python"

    def binary(self) -> str:
        return str((PEERS_VENV / "bin" if self.peers_venv else BIN_DIR) / self.executable)


def _arq_args(concurrency: int) -> list[str]:
    return [
        "benchmarks.peer_apps.arq_app.WorkerSettings",
        "--custom-log-dict", "benchmarks.peer_apps.arq_app.LOG_CONFIG",
    ]  # fmt: skip


LIBRARIES: dict[str, Library] = {
    library.name: library
    for library in (
        Library(
            "coditect",
            "coditect",
            False,
            "execute_tasks_parallel: the batch in one script call (up to 5,000), "
            "results read as its events arrive",
            lambda _: [
                "coditect.jobs.WorkerSettings",
                "--custom-log-dict",
                "benchmarks.worker_logs.NO_JOB_LINES",
            ],
            "arq",
        ),
        Library(
            "saq",
            "saq",
            True,
            "Queue.map (polls every 0.5 s, its default); one job: Job.refresh(until_complete), pub/sub",
            lambda _: ["benchmarks.peer_apps.saq_app.settings", "--workers", "1"],
            "saq",
        ),
        Library(
            "dramatiq",
            "dramatiq",
            True,
            "actor.send per job, then message.get_result(block=True) per job (Redis results backend)",
            lambda n: ["benchmarks.peer_apps.dramatiq_app", "--processes", "1", "--threads", str(n)],
            "dramatiq",
        ),
        Library(
            "taskiq",
            "taskiq",
            True,
            "gathered kiq + gathered wait_result (0.2 s checks, its default); one job: 10 ms checks",
            lambda n: [
                "worker",
                "benchmarks.peer_apps.taskiq_app:broker",
                "--workers",
                "1",
                "--max-async-tasks",
                str(n),
                "--log-level",
                "WARNING",
            ],
            "taskiq",
        ),
        Library(
            "arq",
            "arq",
            False,
            "gathered enqueue_job + gathered Job.result(); ARQ's defaults: 0.5 s polls",
            _arq_args,
            "arq",
            sequential_cap={False: 50, True: 10},
        ),
        Library(
            "arq-10ms",
            "arq",
            False,
            "as arq, with the worker's poll_delay and Job.result(poll_delay) at 10 ms",
            _arq_args,
            "arq",
            env={"BENCH_PEERS_POLL_S": str(TUNED_POLL_S)},
        ),
    )
}


# -- the figures -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    header: str
    digits: int


@dataclass(frozen=True, slots=True)
class FigureSpec:
    key: str
    title: str
    workers: int
    concurrency: int
    sleep_s: float
    jobs: dict[bool, int]  # {quick: count}
    reps: dict[bool, int]
    columns: tuple[Column, ...]
    # Workers started anew for each repetition of each library, never paused, each run after a
    # warm-up of its own: round trips of workers resumed after a pause had outliers of 0.2-1.2 s.
    fresh_workers: bool = False


FIGURES: dict[str, FigureSpec] = {
    "a": FigureSpec(
        "a", "no-op jobs: first enqueue to last result read back", 2, 100, 0.0,
        {False: 5000, True: 500}, {False: 3, True: 1},
        (Column("makespan_s", "makespan s", 2), Column("cpu_s_per_1k", "CPU-s per 1k jobs", 3)),
    ),
    "b": FigureSpec(
        "b", "one job's round trip, 1 idle worker, sequential jobs", 1, 100, 0.0,
        {False: 200, True: 30}, {False: 3, True: 1},
        (Column("p50_ms", "p50 ms", 2), Column("p99_ms", "p99 ms", 2), Column("max_ms", "max ms", 1)),
        fresh_workers=True,
    ),
    "c": FigureSpec(
        "c", "1 s sleeps: makespan (ideal 1.0 s)", 2, 500, 1.0,
        {False: 1000, True: 200}, {False: 3, True: 1},
        (Column("makespan_s", "makespan s", 2),),
    ),
}  # fmt: skip


@dataclass(slots=True)
class Row:
    """One library in one figure: every repetition's values per column, and the warm-up's."""

    library: str
    versions: dict[str, str] = field(default_factory=dict)
    jobs: int = 0
    values: dict[str, list[float]] = field(default_factory=dict)
    warmup: dict[str, float] = field(default_factory=dict)
    cpu_s: list[dict[str, float]] = field(default_factory=list)  # per repetition: client, workers, redis
    error: str | None = None

    def add(self, measured: dict[str, float], *, warmup: bool) -> None:
        for key, value in measured.items():
            if warmup:
                self.warmup[key] = value
            else:
                self.values.setdefault(key, []).append(value)


@dataclass(slots=True)
class FigureOut:
    spec: FigureSpec
    jobs: int
    reps: int
    rows: list[Row] = field(default_factory=list)
    others_cpu_share: float | None = None
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.spec.title,
            "workers": self.spec.workers,
            "concurrency_per_worker": self.spec.concurrency,
            "jobs": self.jobs,
            "sleep_s": self.spec.sleep_s,
            "reps": self.reps,
            "others_cpu_share": self.others_cpu_share,
            "duration_s": round(self.duration_s, 3),
            "libraries": {
                row.library: {
                    "versions": row.versions,
                    "jobs": row.jobs,
                    "values": row.values,
                    "medians": {key: statistics.median(v) for key, v in row.values.items()},
                    "warmup": row.warmup,
                    "cpu_s": row.cpu_s,
                    "error": row.error,
                    "waits": LIBRARIES[row.library].waits if row.library in LIBRARIES else "",
                }
                for row in self.rows
            },
        }


def percentile(samples: Sequence[float], percent: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[percent - 1]


def figure_values(
    spec: FigureSpec, jobs: int, answer: dict[str, Any], cpu_others_s: float
) -> dict[str, float]:
    """The columns of a figure from one run: the driver's answer and the CPU of workers and Redis."""
    if spec.key == "b":
        samples = answer["samples_ms"]
        return {
            "p50_ms": statistics.median(samples),
            "p99_ms": percentile(samples, 99),
            "max_ms": max(samples),
        }
    values = {"makespan_s": float(answer["elapsed_s"])}
    if spec.key == "a":
        values["cpu_s_per_1k"] = (answer["cpu_s"] + cpu_others_s) * 1000 / jobs
    return values


# -- processes ---------------------------------------------------------------------------------


def process_tree(pids: Sequence[int]) -> list[int]:
    """``pids`` and all their descendants (Dramatiq and taskiq run their workers in child processes)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    tree, frontier = list(pids), list(pids)
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def cpu_s(pids: Sequence[int]) -> dict[int, float]:
    """User + system CPU seconds of each of these processes so far (those gone are left out)."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return found


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two readings, by the processes alive at the second."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


class Workers:
    """One library's worker processes with their children: paused (SIGSTOP) unless being measured,
    when ``pausing``."""

    def __init__(self, processes: list[WorkerProcess], *, pausing: bool = True) -> None:
        self.processes = processes
        self.pausing = pausing
        self.tree: list[int] = []

    async def __aenter__(self) -> Workers:
        try:
            for process in self.processes:  # one at a time: imports of many at once share two cores
                await process.start(WORKER_START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise
        self.find_tree()
        if self.pausing:
            self.signal(signal.SIGSTOP)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def find_tree(self) -> list[int]:
        """The processes and their children now, and any seen before (taskiq's parent replaces a
        child that it finds unresponsive, and one paused with the others would be left paused)."""
        roots = [process.pid for process in self.processes if process.process]
        self.tree = list(dict.fromkeys([*self.tree, *process_tree(roots)]))
        return self.tree

    def signal(self, signum: int) -> None:
        for pid in self.find_tree():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    async def stop(self) -> None:
        self.signal(signal.SIGCONT)
        await asyncio.gather(*(process.stop() for process in self.processes if process.process))
        self.signal(signal.SIGKILL)  # any child its parent left behind

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if not self.pausing:
            yield
            return
        self.signal(signal.SIGCONT)
        await asyncio.sleep(RESUME_SETTLE_S)
        try:
            yield
        finally:
            self.signal(signal.SIGSTOP)


class Driver:
    """A library's client process (``benchmarks.peer_apps.driver``): one JSON line out, one back."""

    def __init__(self, library: Library, env: dict[str, str]) -> None:
        self.library = library
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.versions: dict[str, str] = {}

    async def __aenter__(self) -> Driver:
        self.process = await asyncio.create_subprocess_exec(
            str(self.library.python()), "-m", "benchmarks.peer_apps.driver", self.library.driver,
            env=self.env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=2**24,
        )  # fmt: skip
        self.versions = await self._read(WORKER_START_TIMEOUT_S)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            async with asyncio.timeout(15):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        return await self._read(DRIVER_TIMEOUT_S)

    async def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self.process is not None
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout_s):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.library.name} driver exited ({await self.process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "wrong" in answer:
            raise WrongWork(answer["wrong"])
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer


class WrongWork(Exception):
    """A library's results were not the ones its jobs were given."""


class Contestant:
    """One library in one figure: its paused workers, its client, and one measured run at a time."""

    def __init__(self, bench: Bench, library: Library, spec: FigureSpec) -> None:
        self.bench = bench
        self.library = library
        env = {
            **bench.base_env(),
            "BENCH_PEERS_REDIS_URL": bench.redis_url,
            "BENCH_PEERS_CONCURRENCY": str(spec.concurrency),
            **library.env,
        }
        if library.name == "coditect":
            env |= {
                "CODITECT_REDIS_URL": bench.redis_url,
                "CODITECT_MAX_JOBS": str(spec.concurrency),
                "CODITECT_OFFLINE_LATENCY_S": str(spec.sleep_s),
            }
        command = [library.binary(), *library.worker_args(spec.concurrency)]
        ready = "coditect worker ready" if library.name == "coditect" else READY_LINE
        processes = [WorkerProcess(env, command, ready_line=ready) for _ in range(spec.workers)]
        self.workers = Workers(processes, pausing=not spec.fresh_workers)
        self.driver = Driver(library, env)

    async def __aenter__(self) -> Contestant:
        await self.workers.__aenter__()
        try:
            await self.driver.__aenter__()
        except BaseException:
            await self.workers.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.driver.__aexit__()
        await self.workers.stop()

    async def run(self, command: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        """Redis emptied, this library's workers resumed, one command: the answer, and the CPU seconds
        of the client, the workers and Redis meanwhile."""
        with redis.Redis.from_url(self.bench.redis_url) as client:
            client.flushdb()
        async with self.workers.running():
            workers, redis_s = cpu_s(self.workers.find_tree()), self.bench.redis_cpu_s()
            answer = await self.driver.ask(command)
            after = cpu_s(self.workers.find_tree())
            workers_s, redis_s = cpu_since(workers, after), self.bench.redis_cpu_s() - redis_s
        return answer, {"client": answer["cpu_s"], "workers": workers_s, "redis": redis_s}


async def measure(bench: Bench, spec: FigureSpec, libraries: Sequence[Library], quick: bool) -> FigureOut:
    """Every library's warm-up, then the repetitions, libraries taking turns in each."""
    out = FigureOut(spec, spec.jobs[quick], spec.reps[quick])
    rows = {library.name: Row(library.name) for library in libraries}
    out.rows = list(rows.values())
    if spec.fresh_workers:
        for _ in range(out.reps):
            for library in libraries:
                if rows[library.name].error is None:
                    async with _started(bench, library, spec, rows[library.name]) as contestant:
                        if contestant is not None:
                            await _one_run(contestant, rows[library.name], spec, quick, warmup=True)
                            await _one_run(contestant, rows[library.name], spec, quick, warmup=False)
        return out
    async with contextlib.AsyncExitStack() as stack:
        contestants = {}
        for library in libraries:
            contestant = await stack.enter_async_context(_started(bench, library, spec, rows[library.name]))
            if contestant is not None:
                contestants[library.name] = contestant
        for rep in range(out.reps + 1):
            for name, contestant in contestants.items():
                await _one_run(contestant, rows[name], spec, quick, warmup=rep == 0)
    return out


@contextlib.asynccontextmanager
async def _started(
    bench: Bench, library: Library, spec: FigureSpec, row: Row
) -> AsyncIterator[Contestant | None]:
    """The library's workers and client, or None (and the row's error) when they could not start."""
    print(f"      starting {library.name} ...", file=sys.stderr, flush=True)
    async with contextlib.AsyncExitStack() as stack:
        try:
            contestant = await stack.enter_async_context(Contestant(bench, library, spec))
        except Exception as err:
            row.error = f"could not start: {_describe(err)}"
            yield None
            return
        row.versions = contestant.driver.versions
        yield contestant


async def _one_run(contestant: Contestant, row: Row, spec: FigureSpec, quick: bool, *, warmup: bool) -> None:
    """One checked run recorded in ``row``; a failure is recorded there and ends the library's figure."""
    if row.error is not None:
        return
    jobs = spec.jobs[quick]
    cap = contestant.library.sequential_cap
    if spec.key == "b":
        jobs = min(jobs, WARMUP_ROUND_TRIPS[quick]) if warmup else min(jobs, cap[quick] if cap else jobs)
        command: dict[str, Any] = {"op": "round_trips", "count": jobs}
    else:
        command = {"op": "batch", "count": jobs, "sleep_s": spec.sleep_s}
    try:
        answer, cpu = await contestant.run(command)
    except WrongWork as err:
        row.error = f"WRONG RESULTS: {err}"
    except Exception as err:
        row.error = f"could not run: {_describe(err)}"
    else:
        row.add(figure_values(spec, jobs, answer, cpu["workers"] + cpu["redis"]), warmup=warmup)
        if not warmup:
            row.jobs = jobs
            row.cpu_s.append(cpu)


def _describe(err: BaseException) -> str:
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in err.exceptions)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def run_figure(bench: Bench, spec: FigureSpec, libraries: Sequence[Library], quick: bool) -> FigureOut:
    """One figure in its own event loop, with the share of the machine other processes used meanwhile."""
    started, before = time.perf_counter(), CpuSample.take(bench.redis_cpu_s())
    out = asyncio.run(measure(bench, spec, libraries, quick))
    out.duration_s = time.perf_counter() - started
    out.others_cpu_share = CpuSample.take(bench.redis_cpu_s()).others_share_since(before)
    return out


# -- the report --------------------------------------------------------------------------------


def spread(values: Sequence[float], digits: int) -> str:
    """The median, with the range when there are several values: ``0.88 (0.73-1.30)``."""
    median = f"{statistics.median(values):,.{digits}f}"
    if len(values) < 2:
        return median
    return f"{median} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def version_of(row: Row) -> str:
    if not row.versions:
        return "?"
    name = "arq" if row.library.startswith("arq") else row.library
    return row.versions.get(name, "?")


def table(figure: FigureOut) -> list[list[str]]:
    """The figure's table, header first: libraries by their first column's median, best first."""
    spec = figure.spec
    header = [
        "library",
        "version",
        "workers x concurrency",
        *(c.header for c in spec.columns),
        "how it waits",
    ]
    first = spec.columns[0].key

    def order(row: Row) -> float:
        return statistics.median(row.values[first]) if row.values.get(first) else float("inf")

    cells = [header]
    for row in sorted(figure.rows, key=order):
        lanes = f"{spec.workers} x {spec.concurrency}"
        if row.error is not None or not row.values:
            cells.append(
                [row.library, version_of(row), lanes, *(["-"] * len(spec.columns)), row.error or "no runs"]
            )
            continue
        waits = LIBRARIES[row.library].waits if row.library in LIBRARIES else ""
        if row.jobs != figure.jobs:
            waits = f"{row.jobs} jobs per repetition; {waits}"
        values = [spread(row.values[column.key], column.digits) for column in spec.columns]
        cells.append([row.library, version_of(row), lanes, *values, waits])
    return cells


def figure_heading(figure: FigureOut) -> str:
    spec = figure.spec
    share = "?" if figure.others_cpu_share is None else f"{figure.others_cpu_share:.0%}"
    warmup = (
        f"on workers started anew each time, after {WARMUP_ROUND_TRIPS[False]} round trips to warm up"
        if spec.fresh_workers
        else "after a warm-up, the other libraries' workers paused"
    )
    return (
        f"{spec.key}. {figure.jobs:,} jobs{f' x {spec.sleep_s:g} s sleep' if spec.sleep_s else ''}, "
        f"{spec.workers} worker process(es) x concurrency {spec.concurrency}: {spec.title}; "
        f"median of {figure.reps} (min-max) {warmup}; other processes used {share} of the CPU"
    )


def render_text(figures: Sequence[FigureOut]) -> str:
    parts = []
    for figure in figures:
        cells = table(figure)
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
        lines = [
            "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in cells
        ]
        lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
        parts.append("\n".join([figure_heading(figure), *(line.rstrip() for line in lines)]))
    return "\n\n".join(parts)


def versions_line(figures: Sequence[FigureOut]) -> str:
    """Each library with what it ran on (its client's environment; its workers share it)."""
    found: dict[str, dict[str, str]] = {}
    for figure in figures:
        for row in figure.rows:
            found.setdefault(row.library, {}).update(row.versions)
    return "; ".join(
        f"{library}: " + ", ".join(f"{name} {version}" for name, version in versions.items())
        for library, versions in found.items()
        if versions
    )


def render_markdown(figures: Sequence[FigureOut], machine: dict[str, Any]) -> str:
    lines = [
        f"# coditect beside its peers ({machine.get('date', '?')})",
        "",
        f"{machine.get('cores', '?')} cores ({machine.get('cpu', '?')}), "
        f"Python {machine.get('python', '?')}, redis-server {machine.get('redis_server', '?')}, "
        f"commit {machine.get('git', '?')}, "
        f"load average {machine.get('loadavg_start', '?')} at the start.",
    ]
    if machine.get("quick"):
        lines += ["", "**Quick run**: fewer jobs and repetitions; only a smoke check."]
    lines += ["", f"Versions: {versions_line(figures)}."]
    for figure in figures:
        cells = table(figure)
        lines += ["", f"## {figure_heading(figure)}", ""]
        rows = [cells[0], ["---"] * len(cells[0]), *cells[1:]]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_reports(figures: Sequence[FigureOut], machine: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "peers",
        "machine": machine,
        "figures": {figure.spec.key: figure.to_json() for figure in figures},
        "errors": {
            f"{figure.spec.key}: {row.library}": row.error
            for figure in figures
            for row in figure.rows
            if row.error is not None
        },
    }
    json_path, md_path = out_dir / "peers.json", out_dir / "peers.md"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    md_path.write_text(render_markdown(figures, machine))
    return json_path, md_path


# -- the peers' virtualenv and the command line ------------------------------------------------


def ensure_peers_venv(*, fresh: bool) -> None:
    """``.venv-peers`` with the pinned peers, made when missing (or anew with ``--setup``)."""
    python = PEERS_VENV / "bin" / "python"
    if python.exists() and not fresh:
        return
    print(f"making {PEERS_VENV} from {REQUIREMENTS.name} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer jobs and repetitions: a smoke run")
    parser.add_argument("--setup", action="store_true", help=f"make {PEERS_VENV.name} anew first")
    parser.add_argument("--only", nargs="+", choices=list(FIGURES), metavar="FIGURE", help="a, b and/or c")
    parser.add_argument(
        "--libraries", nargs="+", choices=list(LIBRARIES), metavar="NAME", help=", ".join(LIBRARIES)
    )
    parser.add_argument("--output-dir", type=Path, default=Path("test-results"), help="where the reports go")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = args.output_dir.resolve()
    specs = [FIGURES[key] for key in dict.fromkeys(args.only or FIGURES)]
    libraries = [LIBRARIES[name] for name in dict.fromkeys(args.libraries or LIBRARIES)]
    if any(library.peers_venv for library in libraries):
        ensure_peers_venv(fresh=args.setup)
    with bench_session("coditect-peers-", quick=args.quick) as (bench, server):
        machine = machine_info(server, quick=args.quick)
        figures = []
        for spec in specs:
            print(f"[{spec.key}] {spec.title} ...", file=sys.stderr, flush=True)
            figures.append(run_figure(bench, spec, libraries, args.quick))
            print(f"      {figures[-1].duration_s:.1f} s", file=sys.stderr, flush=True)
        machine["loadavg_end"] = loadavg()
    machine["versions"] = versions_line(figures)
    json_path, md_path = write_reports(figures, machine, out_dir)
    print(render_text(figures))
    print(f"\nversions: {machine['versions']}")
    print(f"wrote {json_path} and {md_path}")
    errors = [
        f"{figure.spec.key}: {row.library}: {row.error}"
        for figure in figures
        for row in figure.rows
        if row.error
    ]
    for error in errors:
        print(f"BENCHMARK FAILED: {error}", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
