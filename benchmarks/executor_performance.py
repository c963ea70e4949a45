"""coditect's performance figures (issue 5), measured side by side with bare ARQ in one run.

    .venv/bin/python benchmarks/executor_performance.py [--quick] [--only NAME ...] [--output-dir DIR]

Starts its own ``redis-server`` on a free port, then for each figure its own worker processes
(``arq coditect.jobs.WorkerSettings``, and ``arq benchmarks.arq_baseline.WorkerSettings`` for the ARQ
baseline), and measures every figure as the median of several repetitions. Prints a table and writes
``test-results/executor_performance.json`` (every raw value, machine information) and
``test-results/executor_performance.md``.

Every run's results are checked (count, task ids, statuses, provider; ARQ's returned values). Exit
status: 0 every target met, 1 a target missed (full runs only), 2 a figure did the wrong work or could
not run. ``--quick`` shrinks sizes and repetitions for a smoke check; its pass/fail is indicative.
Variables CODITECT_*, ANTHROPIC_*, OPENAI_* and BENCH_ARQ_* of the caller's environment are ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find benchmarks/, tests/

from benchmarks.harness import (
    BATCH_TIMEOUT_S,
    BIN_DIR,
    ENGINE_LINE,
    REPO_ROOT,
    BatchRun,
    Bench,
    WrongResults,
    bench_session,
    check_results,
    fresh_batch,
    make_tasks,
    rss_mb,
    run_arq_jobs,
    run_batch,
    unique_batch_id,
    wait_for_line,
    warm_then_measure,
)
from benchmarks.metrics import CpuSample, FigureResult, Metric, Target
from benchmarks.report import loadavg, machine_info, render_table, write_reports
from coditect.client.graph import dependency_waves
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.keys import IN_PROGRESS_PREFIX, job_id_for
from coditect.llm.base import Message
from coditect.llm.factory import LlmFactory
from coditect.models import AgentTask, ExecutionResult
from coditect.settings import Settings
from tests.support.fake_provider import FakeProvider

FIGURE_TIMEOUT_S = 900.0
SCALE_RUN_TIMEOUT_S = 600.0
ARQ_DEFAULT_POLL_S = 0.5  # ARQ 0.28: Worker(poll_delay=0.5) and Job.result(poll_delay=0.5)
TUNED_POLL_S = 0.01
EVENTS_BASE_S, EVENTS_COST = 1.82, 0.15  # throughput before events: README, 10,000 x 1 s on 2 workers
EXIT_OK, EXIT_TARGET_MISSED, EXIT_FAILED = 0, 1, 2

Measure = Callable[[Bench, FigureResult], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    title: str
    measure: Measure


FIGURES: dict[str, Figure] = {}


def figure(name: str, title: str) -> Callable[[Measure], Measure]:
    def register(measure: Measure) -> Measure:
        FIGURES[name] = Figure(name, title, measure)
        return measure

    return register


def pct(samples: Sequence[float], percent: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[percent - 1]


# -- the figures -------------------------------------------------------------------------------


@figure("adr", "ADR headline: 3 tasks x 2 s offline latency, 1 worker")
async def adr(bench: Bench, out: FigureResult) -> None:
    count, latency_s, reps = 3, 2.0, bench.pick(5, 2)
    out.params = {"tasks": count, "latency_s": latency_s, "workers": 1, "reps": reps}
    async with (
        bench.coditect_workers(1, CODITECT_OFFLINE_LATENCY_S=str(latency_s)),
        bench.orchestrator() as orch,
    ):
        warmup, runs = await warm_then_measure(reps, partial(fresh_batch, orch, count, "adr"))
    out.raw = {"warmup": asdict(warmup), "runs": [asdict(run) for run in runs]}
    notes = f"sequential would take {count * latency_s:g} s; {_story(warmup, runs)}"
    out.add(Metric("3 tasks x 2 s, 1 worker", "s", [run.elapsed_s for run in runs], Target("<=", 2.1), notes))


async def _makespans(
    bench: Bench, out: FigureResult, *, count: int, reps: int, label: str
) -> tuple[BatchRun, list[BatchRun]]:
    """``count`` tasks x 1 s on 2 workers that may each hold all of them: the warm-up and the runs."""
    out.params = {"tasks": count, "latency_s": 1.0, "workers": 2, "max_jobs": 10_000, "reps": reps}
    async with (
        bench.coditect_workers(2, CODITECT_OFFLINE_LATENCY_S="1", CODITECT_MAX_JOBS="10000"),
        bench.orchestrator() as orch,
    ):
        warmup, runs = await warm_then_measure(reps, partial(fresh_batch, orch, count, label))
    out.raw = {"warmup": asdict(warmup), "runs": [asdict(run) for run in runs]}
    return warmup, runs


def _story(warmup: BatchRun, runs: Sequence[BatchRun]) -> str:
    """Where the median run's time went, how its tasks were split between workers, the warm-up."""
    median_run = sorted(runs, key=lambda run: run.elapsed_s)[len(runs) // 2]
    return (
        f"median run: {median_run.timeline()}, per worker {median_run.split()}; "
        f"warm-up run {warmup.elapsed_s:.2f} s"
    )


@figure("scale-out", "scale-out: 1,000 tasks x 1 s, 2 workers")
async def scale_out(bench: Bench, out: FigureResult) -> None:
    count = bench.pick(1000, 200)
    warmup, runs = await _makespans(bench, out, count=count, reps=bench.pick(5, 2), label="so")
    makespans = [run.elapsed_s for run in runs]
    notes = f"ideal 1.0 s; {_story(warmup, runs)}"
    out.add(Metric(f"makespan, {count:,} x 1 s", "s", makespans, Target("<=", 1.2), notes))


@figure("throughput", "throughput: 10,000 tasks x 1 s, 2 workers")
async def throughput(bench: Bench, out: FigureResult) -> None:
    count = bench.pick(10_000, 2000)
    warmup, runs = await _makespans(bench, out, count=count, reps=bench.pick(3, 2), label="tp")
    makespans = [run.elapsed_s for run in runs]
    out.add(Metric(f"makespan, {count:,} x 1 s", "s", makespans, Target("<=", 2.5), _story(warmup, runs)))
    events = (
        f"events always on; issue 10: at most {EVENTS_COST:.0%} over the {EVENTS_BASE_S} s measured without"
    )
    target = Target("<=", round(EVENTS_BASE_S * (1 + EVENTS_COST), 2))
    out.add(Metric(f"makespan, {count:,} x 1 s, with events", "s", makespans, target, events))
    peers = "2 workers here: ARQ ~1,060/s, SAQ ~3,000, taskiq ~3,350, Dramatiq ~3,900"
    out.add(Metric("tasks per second", "tasks/s", [count / seconds for seconds in makespans], notes=peers))
    # The same on workers as `arq coditect.jobs.WorkerSettings` starts them by default: ARQ's two INFO
    # lines per job (the figures above, like the ARQ baseline and the peers, run without them).
    env = {"CODITECT_OFFLINE_LATENCY_S": "1", "CODITECT_MAX_JOBS": "10000"}
    async with bench.coditect_workers_with_job_lines(2, **env), bench.orchestrator() as orch:
        lines_warmup, lines_runs = await warm_then_measure(
            bench.pick(2, 1), partial(fresh_batch, orch, count, "tpl")
        )
    out.raw["with_job_lines"] = {"warmup": asdict(lines_warmup), "runs": [asdict(run) for run in lines_runs]}
    story = _story(lines_warmup, lines_runs)
    notes = f"workers' default logging: ARQ's INFO line as each job starts and ends; {story}"
    out.add(
        Metric(
            f"makespan, {count:,} x 1 s, per-job log lines",
            "s",
            [r.elapsed_s for r in lines_runs],
            notes=notes,
        )
    )


@figure("hop", "hop: a chain of 200 zero-latency tasks, each after the previous one, 2 workers")
async def hop(bench: Bench, out: FigureResult) -> None:
    count, reps = bench.pick(200, 50), bench.pick(5, 2)
    out.params = {"tasks": count, "latency_s": 0.0, "workers": 2, "max_jobs": "default (100)", "reps": reps}
    tasks = _chain(count, "h")
    async with bench.coditect_workers(2), bench.orchestrator() as orch:
        warmup, runs = await warm_then_measure(reps, partial(_checked_batch, orch, tasks, "hop"))
    gaps = [_hop_gaps_ms(results) for _, _, results in runs]
    out.raw = {"warmup_s": warmup[0], "elapsed_s": [run[0] for run in runs], "hops_ms": gaps}
    how = "next task's start minus the previous task's end (executor timestamps), per run"
    out.add(Metric("hop p50", "ms", [statistics.median(g) for g in gaps], Target("<=", 2.0), how))
    out.add(Metric("hop p99", "ms", [pct(g, 99) for g in gaps]))
    per_task = [elapsed * 1000 / count for elapsed, _, _ in runs]
    out.add(Metric(f"makespan / {count}", "ms", per_task, notes="from the call to the last result in hand"))
    firsts = [_first_started_s(wall, results) * 1000 for _, wall, results in runs]
    out.add(Metric("call to the first task started", "ms", firsts, notes=f"warm-up run {warmup[0]:.3f} s"))


def _chain(count: int, prefix: str) -> list[AgentTask]:
    """``count`` tasks, each depending on the one before it."""
    return [
        AgentTask(
            id=f"{prefix}{i}", title=f"benchmark task {i}", depends_on=[f"{prefix}{i - 1}"] if i else []
        )
        for i in range(count)
    ]


def _hop_gaps_ms(results: Sequence[ExecutionResult]) -> list[float]:
    """For a chain's results (in chain order): each start minus the previous task's end, in ms."""
    gaps = []
    for before, after in itertools.pairwise(results):
        if before.finished_at is None or after.started_at is None:
            raise WrongResults(f"task {before.task_id} or {after.task_id} has no timestamps")
        gaps.append((after.started_at - before.finished_at).total_seconds() * 1000)
    return gaps


def _first_started_s(wall_start: float, results: Sequence[ExecutionResult]) -> float:
    return min(result.started_at.timestamp() for result in results if result.started_at) - wall_start


async def _checked_batch(
    orch: ProjectOrchestrator, tasks: Sequence[AgentTask], label: str
) -> tuple[float, float, list[ExecutionResult]]:
    """An emptied Redis, then ``tasks`` as one batch, checked: (seconds from the call to the results
    in hand, wall clock at the call, the results)."""
    await orch.redis.flushdb()
    wall_start, started = time.time(), time.perf_counter()
    results = await orch.execute_tasks_parallel(
        tasks, batch_id=unique_batch_id(label), timeout_s=BATCH_TIMEOUT_S
    )
    elapsed = time.perf_counter() - started
    check_results(tasks, results)
    return elapsed, wall_start, results


@figure("chain-and-fan", "chain-and-fan: 1,000 tasks x 1 s in chains and fan-outs, 2 workers")
async def chain_and_fan(bench: Bench, out: FigureResult) -> None:
    count, latency_s, max_jobs, reps = bench.pick(1000, 200), 1.0, 1000, bench.pick(3, 1)
    # (chains, chain length, fan-out per chain, after which task of its chain the fan starts)
    shapes = [(1, 3, count - 3, 2), (10, 4, count // 10 - 4, 2)]
    out.params = {
        "tasks": count, "latency_s": latency_s, "workers": 2, "max_jobs": max_jobs,
        "concurrency": 2 * max_jobs, "reps": reps, "shapes": shapes,
    }  # fmt: skip
    env = {"CODITECT_OFFLINE_LATENCY_S": str(latency_s), "CODITECT_MAX_JOBS": str(max_jobs)}
    graphs = [_chains_and_fans(*shape) for shape in shapes]
    async with bench.coditect_workers(2, **env), bench.orchestrator() as orch:

        async def once() -> list[tuple[float, float, list[ExecutionResult]]]:
            return [await _checked_batch(orch, tasks, "cf") for tasks in graphs]  # interleaved

        warmup, runs = await warm_then_measure(reps, once)
    out.raw = {"warmup_s": [run[0] for run in warmup], "elapsed_s": [[run[0] for run in rep] for rep in runs]}
    for index, ((chains, length, fan, after), tasks) in enumerate(zip(shapes, graphs, strict=True)):
        critical_s = len(dependency_waves(tasks)) * latency_s  # the longest chain of the graph
        makespans = [rep[index][0] for rep in runs]
        shape = f"{chains} chain(s) of {length}, a fan-out of {fan} after task {after} of each"
        last = [rep[index][0] - _first_started_s(rep[index][1], rep[index][2]) for rep in runs]
        notes = (
            f"{shape}; critical path {critical_s:g} s; concurrency 2 workers x {max_jobs}; "
            f"first task start to last result {statistics.median(last):.3f} s; "
            f"warm-up {warmup[index][0]:.2f} s"
        )
        name = f"makespan, {chains} x chain {length} + fans"
        out.add(Metric(name, "s", makespans, Target("<=", round(1.1 * critical_s, 3)), notes))
        out.add(Metric(f"{name} / critical path", "x", [m / critical_s for m in makespans]))


def _chains_and_fans(chains: int, length: int, fan: int, after: int) -> list[AgentTask]:
    """``chains`` chains of ``length`` tasks, each with ``fan`` tasks depending on its task ``after``."""
    tasks = []
    for chain in range(chains):
        links = _chain(length, f"c{chain}-")
        tasks += links
        tasks += [
            AgentTask(id=f"f{chain}-{i}", title=f"benchmark fan task {i}", depends_on=[links[after - 1].id])
            for i in range(fan)
        ]
    return tasks


@figure("overhead", "overhead: 5,000 zero-latency tasks, coditect vs bare ARQ, 2 workers each")
async def overhead(bench: Bench, out: FigureResult) -> None:
    count, max_jobs, reps = bench.pick(5000, 1000), 100, bench.pick(3, 2)
    out.params = {"tasks": count, "workers": 2, "max_jobs": max_jobs, "reps": reps}
    async with (
        bench.coditect_workers(2, CODITECT_MAX_JOBS=str(max_jobs)) as ours,
        bench.arq_workers(2, max_jobs=max_jobs) as arq_default,
        bench.arq_workers(2, max_jobs=max_jobs, poll_delay_s=TUNED_POLL_S) as arq_tuned,
        bench.orchestrator() as orch,
        bench.arq_client() as arq,
    ):
        for pool in (ours, arq_default, arq_tuned):
            pool.pause()

        async def once() -> tuple[float, float, float]:
            """coditect, ARQ defaults, ARQ tuned, each with only its own workers running."""
            async with ours.running():
                coditect_s = (await fresh_batch(orch, count, "ov")).elapsed_s
            await orch.redis.flushdb()
            async with arq_default.running():
                default_s = await run_arq_jobs(arq, count, ARQ_DEFAULT_POLL_S)
            await orch.redis.flushdb()
            async with arq_tuned.running():
                tuned_s = await run_arq_jobs(arq, count, TUNED_POLL_S)
            return coditect_s, default_s, tuned_s

        warmup, runs = await warm_then_measure(reps, once)  # interleaved: drift hits all three alike
    ours_s, arq_s, tuned_s = (list(column) for column in zip(*runs, strict=True))
    out.raw = {"warmup_s": warmup, "coditect_s": ours_s, "arq_default_s": arq_s, "arq_tuned_s": tuned_s}
    whole = "orchestrator, Redis, 2 coditect workers, executor, offline provider, results"
    out.add(Metric(f"coditect, {count:,} tasks", "s", ours_s, notes=f"{whole}; warm-up {warmup[0]:.2f} s"))
    arq_notes = "gathered enqueue_job + gathered Job.result(), poll_delay 0.5 s (ARQ defaults)"
    out.add(Metric(f"bare ARQ defaults, {count:,} no-op jobs", "s", arq_s, notes=arq_notes))
    ratios = [ours / base for ours, base in zip(ours_s, arq_s, strict=True)]
    out.add(Metric("ratio coditect / ARQ defaults", "x", ratios, Target("<=", 0.8), "per repetition"))
    tuned_notes = f"worker poll_delay {TUNED_POLL_S} s, Job.result(poll_delay={TUNED_POLL_S}), gathered"
    out.add(Metric(f"bare ARQ tuned, {count:,} no-op jobs", "s", tuned_s, notes=tuned_notes))
    tuned_ratios = [ours / base for ours, base in zip(ours_s, tuned_s, strict=True)]
    out.add(Metric("ratio coditect / ARQ tuned", "x", tuned_ratios))


@figure("latency", "latency: one task's round trip, idle worker")
async def latency(bench: Bench, out: FigureResult) -> None:
    samples, reps, warmup, arq_samples = bench.pick(200, 50), bench.pick(3, 2), 10, bench.pick(10, 3)
    out.params = {"round_trips": samples, "reps": reps, "warmup": warmup, "arq_round_trips": arq_samples}
    async with (
        bench.coditect_workers(1) as ours,
        bench.arq_workers(1) as arq_default,
        bench.orchestrator() as orch,
        bench.arq_client() as arq,
    ):
        arq_default.pause()
        await orch.redis.flushdb()
        await _round_trips(orch, warmup)
        per_rep = [await _round_trips(orch, samples) for _ in range(reps)]
        ours.pause()
        async with arq_default.running():
            arq_ms = [await run_arq_jobs(arq, 1, ARQ_DEFAULT_POLL_S) * 1000 for _ in range(arq_samples)]
    out.raw = {"samples_ms": per_rep, "arq_default_samples_ms": arq_ms}
    how = f"execute_tasks_parallel([task]); {samples} sequential per rep after {warmup} warm-up"
    p50s, p99s = [statistics.median(rep) for rep in per_rep], [pct(rep, 99) for rep in per_rep]
    out.add(Metric("round trip p50", "ms", p50s, Target("<=", 1.2), f"{how}; issue 10 (was <= 2 ms)"))
    out.add(Metric("round trip p99", "ms", p99s, Target("<=", 2.5), "issue 10 (was <= 10 ms)"))
    out.add(Metric("round trip max", "ms", [max(rep) for rep in per_rep]))
    arq_notes = f"{arq_samples} sequential samples, enqueue_job + Job.result(), ARQ defaults"
    out.add(Metric("bare ARQ round trip (median)", "ms", arq_ms, notes=arq_notes))


async def _round_trips(orch: ProjectOrchestrator, count: int) -> list[float]:
    """``count`` sequential one-task batches, each timed from the call to its result (ms)."""
    tasks = make_tasks(count, "rt")
    return [(await run_batch(orch, [task], unique_batch_id("rt"))).elapsed_s * 1000 for task in tasks]


@figure("contention", "contention: 20,000 zero-latency tasks on 2 workers, then on 10")
async def contention(bench: Bench, out: FigureResult) -> None:
    count, reps, many = bench.pick(20_000, 2000), bench.pick(3, 2), 10
    out.params = {"tasks": count, "workers": [2, many], "max_jobs": "default (100)", "reps": reps}
    async with bench.coditect_workers(many) as pool, bench.orchestrator() as orch:

        async def once() -> tuple[BatchRun, BatchRun]:
            """2 workers (the other ones paused), then all of them."""
            pool.pause(pool.workers[2:])
            two = await fresh_batch(orch, count, "c2-")
            if not set(two.per_worker) <= set(pool.pids[:2]):
                raise WrongResults(f"a paused worker ran tasks: {two.per_worker}")
            await pool.resume()
            return two, await fresh_batch(orch, count, "cn-")

        warmup, runs = await warm_then_measure(reps, once)  # interleaved
    two_runs, many_runs = (list(column) for column in zip(*runs, strict=True))
    out.raw = {
        "warmup": [asdict(run) for run in warmup],
        "two": [asdict(run) for run in two_runs],
        "many": [asdict(run) for run in many_runs],
    }
    two_s, many_s = [run.elapsed_s for run in two_runs], [run.elapsed_s for run in many_runs]
    out.add(Metric(f"{count:,} tasks, 2 workers", "s", two_s, notes=_story(warmup[0], two_runs)))
    out.add(Metric(f"{count:,} tasks, {many} workers", "s", many_s, notes=_story(warmup[1], many_runs)))
    ratios = [ten / two for two, ten in zip(two_s, many_s, strict=True)]
    out.add(Metric(f"ratio {many} / 2 workers", "x", ratios, Target("<=", 1.5), "per repetition"))


@figure("scale", "scale: 10k and 100k zero-latency tasks, one orchestrator process, 2 workers")
async def scale(bench: Bench, out: FigureResult) -> None:
    small, large, reps = bench.pick(10_000, 2_000), bench.pick(100_000, 20_000), bench.pick(3, 1)
    streamed_reps = bench.pick(2, 1)
    out.params = {
        "tasks": [small, large], "workers": 2, "max_jobs": "default (100)", "reps": reps,
        "as_completed_reps": streamed_reps, "orchestrator": "python -m benchmarks.scale_orchestrator",
    }  # fmt: skip
    async with bench.coditect_workers(2), bench.orchestrator() as orch:

        async def once() -> dict[str, dict[str, float]]:
            return {
                "small": await _scale_run(bench, orch, small, "run_batch"),
                "large": await _scale_run(bench, orch, large, "run_batch"),
            }

        warmup = await _scale_run(bench, orch, small, "run_batch")
        runs = [await once() for _ in range(reps)]
        streamed = [await _scale_run(bench, orch, large, "as_completed") for _ in range(streamed_reps)]
    out.raw = {"warmup": warmup, "runs": runs, "as_completed": streamed}
    by = {size: [run[size] for run in runs] for size in ("small", "large")}
    rates = {size: [r["tasks"] / r["elapsed_s"] for r in by[size]] for size in by}
    for size, count in (("small", small), ("large", large)):
        split = statistics.median(r["submit_s"] for r in by[size])
        notes = f"call to the last result in hand; submit {split:.2f} s of it"
        out.add(Metric(f"{count:,} tasks: tasks per second", "tasks/s", rates[size], notes=notes))
    ratios = [big / ten for big, ten in zip(rates["large"], rates["small"], strict=True)]
    out.add(Metric(f"ratio tasks/s {large:,} / {small:,}", "x", ratios, Target(">", 0.9), "within 10 %"))
    for size, count in (("small", small), ("large", large)):
        target = Target("<=", 0.3) if size == "large" else None
        firsts = [r["first_started_s"] for r in by[size]]
        out.add(
            Metric(f"{count:,} tasks: call to first task started", "s", firsts, target, "results' started_at")
        )
    for size, count in (("small", small), ("large", large)):
        target = Target("<=", 3.7) if size == "large" else None
        per_task = [r["peak_rss_mb"] * 1000 / count for r in by[size]]
        peak = statistics.median(r["peak_rss_mb"] for r in by[size])
        before = statistics.median(r["rss_before_mb"] for r in by[size])
        notes = f"run_batch: peak {peak:.0f} MB (VmHWM), {before:.0f} MB at the call (tasks built)"
        out.add(
            Metric(f"{count:,} tasks: orchestrator peak RSS per task", "KB/task", per_task, target, notes)
        )
    for size, count in (("small", small), ("large", large)):
        cpu = [r["cpu_s"] * 1000 / count for r in by[size]]
        submit = statistics.median(r["submit_cpu_s"] * 1000 / count for r in by[size])
        notes = f"orchestrator CPU, call to last result; {submit:.3f} s of it up to the end of the submit"
        out.add(Metric(f"{count:,} tasks: orchestrator CPU per 1k tasks", "s", cpu, notes=notes))
    waits = {size: [r["wait_cpu_s"] * 1000 / r["tasks"] for r in by[size]] for size in by}
    for size, count in (("small", small), ("large", large)):
        out.add(
            Metric(f"{count:,} tasks: waiter CPU per 1k tasks", "s", waits[size], notes="after the submit")
        )
    own = {
        size: [(r["wait_cpu_s"] - r["wait_gc_cpu_s"]) * 1000 / r["tasks"] for r in by[size]] for size in by
    }
    for size, count in (("small", small), ("large", large)):
        notes = "the waiter's CPU less the cyclic garbage collector's (gc.callbacks)"
        out.add(Metric(f"{count:,} tasks: waiter CPU per 1k tasks, less GC", "s", own[size], notes=notes))
    growth = [big / ten for big, ten in zip(waits["large"], waits["small"], strict=True)]
    grow = "must not grow with the batch"
    out.add(Metric(f"ratio waiter CPU per task {large:,} / {small:,}", "x", growth, Target("<=", 1.1), grow))
    streamed_name = f"{large:,} tasks, as_completed:"
    rates_streamed = [r["tasks"] / r["elapsed_s"] for r in streamed]
    out.add(
        Metric(f"{streamed_name} tasks per second", "tasks/s", rates_streamed, notes="submit, then iterate")
    )
    peak = statistics.median(r["peak_rss_mb"] for r in streamed)
    per_task_streamed = [r["peak_rss_mb"] * 1000 / large for r in streamed]
    notes = f"peak {peak:.0f} MB; each result checked and dropped"
    out.add(
        Metric(f"{streamed_name} orchestrator peak RSS per task", "KB/task", per_task_streamed, notes=notes)
    )
    firsts_streamed = [r["first_started_s"] for r in streamed]
    out.add(Metric(f"{streamed_name} call to first task started", "s", firsts_streamed))
    cpu_streamed = [r["cpu_s"] * 1000 / large for r in streamed]
    out.add(Metric(f"{streamed_name} orchestrator CPU per 1k tasks", "s", cpu_streamed))


async def _scale_run(bench: Bench, orch: ProjectOrchestrator, count: int, mode: str) -> dict[str, float]:
    """An emptied Redis, then ``benchmarks.scale_orchestrator`` in a process of its own: its figures."""
    await orch.redis.flushdb()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.scale_orchestrator",
        bench.redis_url, str(count), mode, unique_batch_id("scale"),
        env=bench.base_env(), cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(SCALE_RUN_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        message = stderr.decode()[-1000:]
        if process.returncode == 2 and "WRONG RESULTS" in message:
            raise WrongResults(message.strip())
        raise RuntimeError(f"scale_orchestrator exited {process.returncode}: {message}")
    figures: dict[str, float] = json.loads(stdout.decode().strip().splitlines()[-1])
    return figures


@figure("startup", "start-up: coditect --help, and a worker ready to take jobs")
async def startup(bench: Bench, out: FigureResult) -> None:
    help_reps, worker_reps, arq_reps = bench.pick(7, 2), bench.pick(5, 2), bench.pick(3, 1)
    out.params = {"help_reps": help_reps, "worker_reps": worker_reps, "arq_worker_reps": arq_reps}
    await _time_help(bench)  # warm-up: the first run pays for a cold page cache
    help_s = [await _time_help(bench) for _ in range(help_reps)]
    ready_s: list[float] = []
    engine_s: list[float] = []
    for _ in range(worker_reps):
        started = time.perf_counter()
        async with bench.coditect_workers(1) as pool:
            ready_s.append(time.perf_counter() - started)
            await wait_for_line(pool.workers[0], ENGINE_LINE, timeout_s=30)
            engine_s.append(time.perf_counter() - started)
    arq_s = []
    for _ in range(arq_reps):
        started = time.perf_counter()
        async with bench.arq_workers(1):
            arq_s.append(time.perf_counter() - started)
    out.raw = {"help_s": help_s, "ready_line_s": ready_s, "engine_line_s": engine_s, "arq_ready_s": arq_s}
    out.add(Metric("coditect --help", "s", help_s, Target("<=", 0.3), "wall time of the subprocess"))
    engine = "spawn to its 'engine:' line (claim loop starting)"
    out.add(Metric("worker spawn to ready for jobs", "s", engine_s, Target("<=", 1.0), engine))
    out.add(Metric("worker spawn to 'coditect worker ready'", "s", ready_s, notes="on_startup done"))
    out.add(Metric("bare ARQ worker spawn to ready", "s", arq_s, notes="its on_startup line"))


async def _time_help(bench: Bench) -> float:
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        str(BIN_DIR / "coditect"), "--help", env=bench.base_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    elapsed = time.perf_counter() - started
    if process.returncode != 0 or b"usage: coditect" not in stdout:
        raise WrongResults(f"coditect --help exited {process.returncode}: {stderr.decode()[-500:]}")
    return elapsed


@figure("event-loop", "event loop: asyncio.run() + fresh client per task vs one loop, one pooled client")
def event_loop(bench: Bench, out: FigureResult) -> None:
    calls, reps = bench.pick(100, 30), bench.pick(5, 2)
    out.params = {"calls": calls, "reps": reps, "provider": "openai (local FakeProvider over HTTP)"}
    fresh_ms: list[float] = []
    pooled_ms: list[float] = []
    with FakeProvider() as server:
        settings = Settings(_env_file=None, llm_provider="openai", openai_base_url=f"{server.url}/v1")
        asyncio.run(_call(settings, "warm-up"))
        asyncio.run(_pooled_calls(settings, 1))
        for _ in range(reps):
            started = time.perf_counter()
            for i in range(calls):
                asyncio.run(_call(settings, f"fresh {i}"))
            fresh_ms.append((time.perf_counter() - started) * 1000 / calls)
            started = time.perf_counter()
            asyncio.run(_pooled_calls(settings, calls))
            pooled_ms.append((time.perf_counter() - started) * 1000 / calls)
        expected = 2 + 2 * calls * reps
        if len(server.requests) != expected:
            raise WrongResults(f"the provider saw {len(server.requests)} requests, expected {expected}")
    out.raw = {"fresh_ms_per_task": fresh_ms, "pooled_ms_per_task": pooled_ms}
    out.add(
        Metric("asyncio.run() + fresh LlmFactory per task", "ms", fresh_ms, notes=f"{calls} sequential calls")
    )
    out.add(Metric("one loop, one pooled client", "ms", pooled_ms, notes=f"{calls} sequential calls"))
    ratios = [a / b for a, b in zip(fresh_ms, pooled_ms, strict=True)]
    out.add(Metric("ratio fresh / pooled", "x", ratios, Target(">", 1.0), "the pooled path must win"))


async def _call(settings: Settings, prompt: str, factory: LlmFactory | None = None) -> None:
    """One OpenAI-compatible call, checked; with a fresh factory (and HTTP client) unless given one."""
    async with contextlib.AsyncExitStack() as stack:
        if factory is None:
            factory = await stack.enter_async_context(LlmFactory(settings))
        response = await factory.create("openai").generate_content_async([Message("user", prompt)])
    if response.text != f"echo: {prompt}":
        raise WrongResults(f"the provider answered {response.text!r} to {prompt!r}")


async def _pooled_calls(settings: Settings, count: int) -> None:
    async with LlmFactory(settings) as factory:
        for i in range(count):
            await _call(settings, f"pooled {i}", factory)


@figure("memory", "memory: a worker's RSS with 1,000 tasks in flight")
async def memory(bench: Bench, out: FigureResult) -> None:
    count, latency_s, reps = bench.pick(1000, 200), bench.pick(5.0, 2.0), bench.pick(3, 1)
    out.params = {"in_flight": count, "latency_s": latency_s, "workers": 1, "max_jobs": 10_000, "reps": reps}
    env = {"CODITECT_OFFLINE_LATENCY_S": str(latency_s), "CODITECT_MAX_JOBS": "10000"}
    async with bench.coditect_workers(1, **env) as pool, bench.orchestrator() as orch:
        (pid,) = pool.pids
        await asyncio.sleep(0.5)  # past start-up: the engine is waiting for work
        idle = rss_mb(pid)
        in_flight = []
        for rep in range(reps):
            await orch.redis.flushdb()
            tasks, batch_id = make_tasks(count, f"m{rep}-"), unique_batch_id("mem")
            batch = asyncio.create_task(run_batch(orch, tasks, batch_id))
            try:
                await _until_running(orch, [job_id_for(batch_id, task.id) for task in tasks], latency_s)
                in_flight.append(rss_mb(pid))
                await batch  # the results, checked
            finally:
                if not batch.done():
                    batch.cancel()
                    await asyncio.gather(batch, return_exceptions=True)
        peak = rss_mb(pid, "VmHWM")
    out.raw = {"idle_mb": idle, "in_flight_mb": in_flight, "peak_mb": peak}
    out.add(Metric("worker RSS, idle", "MB", [idle], notes="after start-up"))
    how = f"VmRSS once {count:,} tasks hold an in-progress key; 1 worker, {latency_s:g} s tasks"
    out.add(Metric(f"worker RSS, {count:,} tasks in flight", "MB", in_flight, Target("<=", 150.0), how))
    out.add(Metric("worker peak RSS (VmHWM)", "MB", [peak], notes="over the whole figure"))


async def _until_running(orch: ProjectOrchestrator, job_ids: list[str], within_s: float) -> None:
    """Poll Redis until every job is held by a worker (an in-progress key each)."""
    try:
        async with asyncio.timeout(within_s):
            # The state is in Redis, and this figure's brief is to poll it.
            while await _count_running(orch, job_ids) < len(job_ids):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        running = await _count_running(orch, job_ids)
        raise WrongResults(
            f"only {running} of {len(job_ids)} tasks were running after {within_s} s"
        ) from None
    await asyncio.sleep(0.2)  # the claimed jobs' coroutines have all started by now


@figure("rate-limited", "rate-limited: a batch at a limit shared by 2 workers, fake provider enforcing it")
async def rate_limited(bench: Bench, out: FigureResult) -> None:
    """The provider allows 30 requests in any rolling second (1,800/min); the limits file 5 % under it
    (1,710/min), since providers count over short windows. Achieved rate from the provider's own
    timestamps of the requests it accepted; the warm-up batch runs on cold workers."""
    import json

    from benchmarks.harness import BATCH_TIMEOUT_S
    from coditect.models import AgentTask
    from tests.support.provider_process import ProviderProcess, provider_process

    provider_rpm, rpm, model, max_jobs = 1800, 1710, "fake-sonnet", 10
    count, reps, warmup_count = bench.pick(600, 150), bench.pick(3, 1), bench.pick(60, 30)
    out.params = {
        "tasks": count, "provider_rpm": provider_rpm, "limit_rpm": rpm, "workers": 2, "max_jobs": max_jobs,
        "provider_latency_s": 0.05, "reps": reps, "warmup_tasks": warmup_count,
    }  # fmt: skip

    async def once(provider: ProviderProcess, orch: ProjectOrchestrator, size: int) -> dict[str, float]:
        """One checked batch of ``size`` tasks: what the provider saw."""
        await provider.clear()
        label = unique_batch_id("rl")
        tasks = [AgentTask(id=f"{label}-{i}", title=f"rate-limited task {i}") for i in range(size)]
        results = await orch.execute_tasks_parallel(tasks, batch_id=label, timeout_s=BATCH_TIMEOUT_S)
        if [r.task_id for r in results] != [t.id for t in tasks] or any(not r.succeeded for r in results):
            wrong = next((r for r in results if not r.succeeded), results[0])
            raise WrongResults(
                f"{len(results)} results for {size} tasks; e.g. {wrong.task_id}: {wrong.error}"
            )
        if any(r.provider != "anthropic" or not r.output.startswith("echo: ") for r in results):
            raise WrongResults("a result did not come from the fake provider through the Anthropic SDK")
        served = sorted(await provider.served(), key=lambda entry: entry["at"])
        accepted = [entry["at"] for entry in served if entry["status"] == 200]
        if len(accepted) != size:
            raise WrongResults(f"the provider accepted {len(accepted)} requests for {size} tasks")
        span = accepted[-1] - accepted[0]
        busiest = max(sum(1 for t in accepted if start <= t < start + 1.0) for start in accepted)
        return {
            "requests": len(served),
            "refused": sum(1 for entry in served if entry["status"] == 429),
            "span_s": span,
            "rpm": (len(accepted) - 1) / span * 60,  # n requests span n - 1 intervals
            "max_in_1s": busiest,
        }

    with tempfile.TemporaryDirectory(prefix="coditect-bench-limits-") as folder:
        limits = Path(folder) / "limits.json"
        limits.write_text(
            json.dumps({"limits": [{"provider": "anthropic", "model": model, "requests_per_minute": rpm}]})
        )
        args = ("--requests-per-minute", str(provider_rpm), "--latency-s", "0.05")
        async with provider_process(*args) as provider:
            env = provider.worker_env(
                CODITECT_LLM_MODEL=model, CODITECT_LIMITS_FILE=str(limits), CODITECT_MAX_JOBS=str(max_jobs)
            )
            async with bench.coditect_workers(2, **env), bench.orchestrator() as orch:
                cold = await once(provider, orch, warmup_count)
                runs = [await once(provider, orch, count) for _ in range(reps)]
    out.raw = {"warmup": cold, "runs": runs}
    cold_notes = f"warm-up on cold workers: 429s {cold['refused']} of {cold['requests']} requests"
    ratio_notes = f"target >= 0.9; limit {rpm}/min, 5 % under the provider's {provider_rpm}/min; {cold_notes}"
    out.add(
        Metric(
            "achieved rate / limit", "x", [run["rpm"] / rpm for run in runs], Target(">", 0.9), ratio_notes
        )
    )
    shares = [100 * run["refused"] / run["requests"] for run in runs]
    out.add(
        Metric("429 share", "%", shares, Target("<=", 0.99), "target < 1 %; each 429 pauses every worker")
    )
    out.add(Metric("achieved rate", "req/min", [run["rpm"] for run in runs], notes=f"{count} tasks per run"))
    busiest = [float(run["max_in_1s"]) for run in runs]
    out.add(
        Metric(
            "most requests in any 1 s", "requests", busiest, notes=f"the provider allows {provider_rpm // 60}"
        )
    )


async def _count_running(orch: ProjectOrchestrator, job_ids: Sequence[str]) -> int:
    """How many of ``job_ids`` a worker holds right now (an in-progress key each)."""
    async with orch.redis.pipeline(transaction=False) as pipe:
        for start in range(0, len(job_ids), 500):
            pipe.exists(*(IN_PROGRESS_PREFIX + job_id for job_id in job_ids[start : start + 500]))
        counts = await pipe.execute()
    return int(sum(counts))


# -- running them ------------------------------------------------------------------------------


def run_figure(spec: Figure, bench: Bench) -> FigureResult:
    """Measure one figure; a failure is recorded in the result (the other figures still run)."""
    out = FigureResult(spec.name, spec.title, loadavg_before=loadavg())
    started = time.perf_counter()
    cpu_before = CpuSample.take(bench.redis_cpu_s())
    try:
        pending = spec.measure(bench, out)
        if inspect.isawaitable(pending):
            asyncio.run(_bounded(pending, FIGURE_TIMEOUT_S))
    except WrongResults as err:
        out.error = f"WRONG RESULTS: {err}"
    except Exception as err:
        out.error = f"could not run: {_describe(err)}"
    out.duration_s = time.perf_counter() - started
    out.others_cpu_share = CpuSample.take(bench.redis_cpu_s()).others_share_since(cpu_before)
    return out


async def _bounded(pending: Awaitable[None], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        await pending


def _describe(err: BaseException) -> str:
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in err.exceptions)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        metavar="NAME",
        choices=list(FIGURES),
        help="run only these figures",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("test-results"), help="where the JSON and markdown go"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = args.output_dir.resolve()
    specs = [FIGURES[name] for name in dict.fromkeys(args.only or FIGURES)]
    with bench_session("coditect-bench-", quick=args.quick) as (bench, server):
        machine = machine_info(server, quick=args.quick)
        results = []
        for number, spec in enumerate(specs, 1):
            print(f"[{number}/{len(specs)}] {spec.title} ...", file=sys.stderr, flush=True)
            results.append(run_figure(spec, bench))
            done = results[-1]
            others = f"{done.others_cpu_share:.0%}" if done.others_cpu_share is not None else "?"
            print(f"      {done.duration_s:.1f} s; other processes used {others} of the CPU", file=sys.stderr)
        machine["loadavg_end"] = loadavg()
    json_path, md_path = write_reports(results, machine, out_dir, quick=args.quick)
    print(render_table(results, args.quick))
    print(f"\nwrote {json_path} and {md_path}")
    return _verdict(results, args.quick)


def _verdict(results: Sequence[FigureResult], quick: bool) -> int:
    failed = [result for result in results if result.error is not None]
    for result in failed:
        print(f"BENCHMARK FAILED: {result.name}: {result.error}", file=sys.stderr)
    if failed:
        return EXIT_FAILED
    missed = [f"{r.name}: {m.name}" for r in results for m in r.metrics if m.passed is False]
    if missed and not quick:
        print(f"targets missed: {'; '.join(missed)}", file=sys.stderr)
        return EXIT_TARGET_MISSED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
