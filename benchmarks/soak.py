"""Soak under worker kills (issue 4): a big batch while a random worker is SIGKILLed and restarted.

    .venv/bin/python benchmarks/soak.py [--tasks 10000] [--workers 3] [--kill-every-s 3] ...

Starts its own ``redis-server`` on a free port, a fake OpenAI-compatible provider on loopback (in
this process) and ``--workers`` worker processes (``arq coditect.jobs.WorkerSettings``); runs one
batch of ``--tasks`` tasks; every ``--kill-every-s`` seconds SIGKILLs a random worker and starts a
new one, until the batch is done. Stops by itself (``--time-limit-s``) and stops every process it
started. Prints the figures and writes ``test-results/soak.json`` and ``test-results/soak.md``.

Definitions (also written with the figures):

- **completed**: tasks whose final result is ``success``.
- **lost**: tasks with no final result written by a worker when the batch returned (must be 0).
- **executions**: requests the fake provider received; each start of a task body sends one.
- **duplicate executions**: executions beyond one per task (the bodies a killed worker had started).
- **re-run tasks**: tasks whose result says ``attempts`` > 1.
- **time to recover** (one kill): from the SIGKILL to the last of the tasks the killed worker held
  being completed by another worker. The lease is what detects the death, so this is at least the
  lease (``--lease-s``), plus the wait for a free slot and the task's own run time.

Exit status: 0 nothing lost and every task completed, 1 otherwise, 2 the run could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find benchmarks/, tests/

import redis.asyncio

from benchmarks.harness import REPO_ROOT, Bench, started_redis
from benchmarks.report import machine_info
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.settings import Settings
from tests.support.fake_provider import OPENAI_PATH, FakeProvider
from tests.support.workers import WorkerProcess

WORKER_START_TIMEOUT_S = 60.0
CLEANUP_S = 60.0
BATCH_ID = "soak"
IN_PROGRESS = "arq:in-progress:"
JOB_PREFIX = f"coditect:{BATCH_ID}:"
QUEUE = "coditect:queue"


@dataclass
class Kill:
    """One SIGKILL: whom, when (wall clock), and the tasks it held at that moment."""

    pid: int
    at: float
    held: list[str]
    recover_s: float | None = None
    rerun_elsewhere: int = 0


@dataclass
class Chaos:
    """The worker processes, and the kills done to them."""

    env: dict[str, str]
    workers: list[WorkerProcess] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    started: int = 0

    async def start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.env)
        self.workers.append(worker)
        self.started += 1
        await worker.start(WORKER_START_TIMEOUT_S)
        return worker

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.process is not None and w.process.returncode is None]

    async def kill_one(self, client: redis.asyncio.Redis, rng: random.Random) -> None:
        victim = rng.choice(self.alive())
        held = await held_by(client, victim.pid)
        at = time.time()
        await victim.kill()
        self.kills.append(Kill(victim.pid, at, held))
        await self.start_worker()

    async def stop_all(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)


async def held_by(client: redis.asyncio.Redis, pid: int) -> list[str]:
    """Task ids of the soak batch whose lease the worker ``pid`` holds (token ``host:pid:random``)."""
    keys = [key async for key in client.scan_iter(match=IN_PROGRESS + JOB_PREFIX + "*", count=1000)]
    tokens = await client.mget(keys) if keys else []
    return [
        key.decode()[len(IN_PROGRESS + JOB_PREFIX) :]
        for key, token in zip(keys, tokens, strict=True)
        if token is not None and int(token.decode().rsplit(":", 2)[-2]) == pid
    ]


async def kill_until_done(
    chaos: Chaos, client: redis.asyncio.Redis, batch: asyncio.Task[Any], every_s: float, seed: int
) -> None:
    rng = random.Random(seed)
    while not batch.done():
        done, _ = await asyncio.wait([batch], timeout=every_s)
        if not done:
            await chaos.kill_one(client, rng)


def pid_of(result: ExecutionResult) -> int | None:
    return int(result.worker.rsplit(":", 1)[1]) if result.worker else None


def measure_recovery(kills: Sequence[Kill], results: dict[str, ExecutionResult]) -> None:
    for kill in kills:
        elsewhere = [
            results[task_id]
            for task_id in kill.held
            if task_id in results and pid_of(results[task_id]) not in (None, kill.pid)
        ]
        finished = [r.finished_at.timestamp() for r in elsewhere if r.finished_at is not None]
        kill.rerun_elsewhere = len(elsewhere)
        kill.recover_s = round(max(finished) - kill.at, 3) if finished else None


def executions_per_task(provider: FakeProvider) -> Counter[str]:
    """Task ids from the prompts the provider received: one per execution of a task body."""
    counts: Counter[str] = Counter()
    for request in provider.requests:
        if request.path == OPENAI_PATH and isinstance(request.body, dict):
            counts["t" + str(request.body["messages"][-1]["content"]).removeprefix("soak task ")] += 1
    return counts


async def leftovers(client: redis.asyncio.Redis) -> dict[str, int]:
    counts = {"queued": int(await client.zcard(QUEUE)), "leases": int(await client.zcard(QUEUE + ":leases"))}
    for name, pattern in (
        ("in_progress", IN_PROGRESS + "*"),
        ("jobs", "arq:job:*"),
        ("tries", "arq:retry:*"),
    ):
        counts[name] = len([key async for key in client.scan_iter(match=pattern, count=1000)])
    return counts


def summarise(
    args: argparse.Namespace,
    tasks: Sequence[AgentTask],
    results: list[ExecutionResult],
    chaos: Chaos,
    executions: Counter[str],
    left: dict[str, int],
    elapsed_s: float,
) -> dict[str, Any]:
    by_id = {r.task_id: r for r in results}
    measure_recovery(chaos.kills, by_id)
    statuses = Counter(r.status.value for r in results)
    lost = sum(1 for r in results if r.attempts == 0 or r.worker is None)
    recover = [k.recover_s for k in chaos.kills if k.recover_s is not None]
    total_executions = sum(executions.values())
    figures = {
        "tasks": len(tasks),
        "completed": statuses.get(ExecutionStatus.SUCCESS.value, 0),
        "failed": len(tasks) - statuses.get(ExecutionStatus.SUCCESS.value, 0),
        "statuses": dict(statuses),
        "lost": lost,
        "executions": total_executions,
        "duplicate_executions": total_executions - len(executions),
        "tasks_never_executed": sum(1 for t in tasks if executions[t.id] == 0),
        "tasks_executed_more_than_once": sum(1 for n in executions.values() if n > 1),
        "rerun_tasks": sum(1 for r in results if r.attempts > 1),
        "max_attempts": max((r.attempts for r in results), default=0),
        "kills": len(chaos.kills),
        "workers_started": chaos.started,
        "held_at_kills": sum(len(k.held) for k in chaos.kills),
        "recover_s_max": max(recover) if recover else None,
        "recover_s_median": statistics.median(recover) if recover else None,
        "recover_s": recover,
        "elapsed_s": round(elapsed_s, 3),
        "tasks_per_s": round(len(tasks) / elapsed_s, 1) if elapsed_s else None,
        "leftovers": left,
    }
    passed = lost == 0 and figures["completed"] == len(tasks) and not any(left.values())
    return {
        "benchmark": "soak",
        "passed": passed,
        "params": {k: v for k, v in vars(args).items() if k != "output_dir"},
        "figures": figures,
        "kills": [asdict(k) | {"held": len(k.held)} for k in chaos.kills],
        "definitions": {
            "completed": "final result success",
            "lost": "no final result written by a worker when the batch returned (must be 0)",
            "executions": "requests received by the fake provider; one per start of a task body",
            "duplicate_executions": "executions beyond one per task",
            "rerun_tasks": "results with attempts > 1",
            "recover_s": (
                "per kill: from the SIGKILL to the last task the killed worker held being completed by "
                "another worker (the lease, then a free slot, then the task's run time)"
            ),
        },
    }


def render_markdown(report: dict[str, Any], machine: dict[str, Any]) -> str:
    f, p = report["figures"], report["params"]

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    rows = [
        ("tasks", f"{f['tasks']:,}", ""),
        ("completed", f"{f['completed']:,}", "final result success"),
        ("lost", str(f["lost"]), "must be 0"),
        ("duplicate executions", str(f["duplicate_executions"]), "provider calls beyond one per task"),
        ("tasks executed more than once", str(f["tasks_executed_more_than_once"]), ""),
        ("re-run tasks (attempts > 1)", str(f["rerun_tasks"]), f"max attempts {f['max_attempts']}"),
        ("kills", str(f["kills"]), f"{f['held_at_kills']} tasks held by the killed workers in total"),
        ("time to recover, median", seconds(f["recover_s_median"]), f"lease {p['lease_s']} s"),
        ("time to recover, max", seconds(f["recover_s_max"]), ""),
        ("elapsed", seconds(f["elapsed_s"]), f"{f['tasks_per_s']} tasks/s"),
        ("left in Redis", json.dumps(f["leftovers"]), "queued, lease index, leases, payloads, try counters"),
    ]
    header = (
        f"# Soak under worker kills ({machine['date']})\n\n"
        f"{machine['cores']} cores ({machine['cpu']}), Python {machine['python']}, "
        f"redis-server {machine['redis_server']}, commit {machine['git']}. "
        f"{p['tasks']:,} tasks, {p['workers']} workers x {p['max_jobs']} slots, provider latency "
        f"{p['latency_s']} s, a random worker SIGKILLed and restarted every {p['kill_every_s']} s, "
        f"lease {p['lease_s']} s. Result: **{'pass' if report['passed'] else 'FAIL'}**.\n"
    )
    table = "\n".join(
        ["| figure | value | notes |", "| --- | --- | --- |"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    )
    definitions = "\n".join(f"- **{name}**: {text}" for name, text in report["definitions"].items())
    return f"{header}\n{table}\n\nDefinitions:\n\n{definitions}\n"


async def soak(args: argparse.Namespace, bench: Bench, provider: FakeProvider) -> dict[str, Any]:
    env = {
        **bench.base_env(),
        "CODITECT_REDIS_URL": bench.redis_url,
        "CODITECT_LLM_PROVIDER": "openai",
        "CODITECT_OPENAI_BASE_URL": f"{provider.url}/v1",
        "CODITECT_MAX_JOBS": str(args.max_jobs),
        "CODITECT_LEASE_S": str(args.lease_s),
        "CODITECT_MAX_TRIES": str(args.max_tries),
    }
    tasks = [AgentTask(id=f"t{i}", title=f"soak task {i}") for i in range(args.tasks)]
    chaos = Chaos(env)
    settings = Settings(_env_file=None, redis_url=bench.redis_url)
    try:
        await asyncio.gather(*(chaos.start_worker() for _ in range(args.workers)))
        async with (
            redis.asyncio.Redis.from_url(bench.redis_url) as client,
            ProjectOrchestrator(settings) as orch,
        ):
            started = time.monotonic()
            batch = asyncio.create_task(orch.run_batch(tasks, batch_id=BATCH_ID, timeout_s=args.time_limit_s))
            try:
                await kill_until_done(chaos, client, batch, args.kill_every_s, args.seed)
                results = await batch
            finally:
                batch.cancel()
                await asyncio.gather(batch, return_exceptions=True)
            elapsed = time.monotonic() - started
            left = await leftovers(client)
    finally:
        await chaos.stop_all()
    return summarise(args, tasks, results, chaos, executions_per_task(provider), left, elapsed)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--max-jobs", type=int, default=20, help="slots per worker")
    parser.add_argument("--latency-s", type=float, default=0.2, help="the fake provider's reply delay")
    parser.add_argument("--kill-every-s", type=float, default=3.0)
    parser.add_argument("--lease-s", type=float, default=3.0)
    parser.add_argument("--max-tries", type=int, default=10)
    parser.add_argument("--time-limit-s", type=float, default=600.0, help="the batch gives up after this")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "test-results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="coditect-soak-") as workdir,
        started_redis(Path(workdir)) as server,
    ):
        machine = machine_info(server, quick=False)
        bench = Bench(server.url, quick=False)
        with FakeProvider(latency_s=args.latency_s) as provider:
            report = asyncio.run(asyncio.wait_for(soak(args, bench, provider), args.time_limit_s + CLEANUP_S))
    report["machine"] = machine
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report, machine)
    (args.output_dir / "soak.md").write_text(markdown)
    print(markdown)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM as on Ctrl-C
    sys.exit(main())
