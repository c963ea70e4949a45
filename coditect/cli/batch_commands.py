"""Commands on batches: demo, run, submit, watch, status, results, cancel, events, batches."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from coditect.cli.shared import (
    EXIT_NOT_ALL_SUCCEEDED,
    EXIT_OK,
    ONE_SHOT_DEADLINE_S,
    exit_code,
    load_batch,
    load_settings,
    open_orchestrator,
    print_json,
    print_results,
    progress,
    require_redis,
)

if TYPE_CHECKING:
    from coditect.client.batchfile import BatchSpec
    from coditect.client.orchestrator import ProjectOrchestrator
    from coditect.models import AgentTask, Budget
    from coditect.settings import Settings

__all__ = [
    "cmd_batches",
    "cmd_cancel",
    "cmd_demo",
    "cmd_events",
    "cmd_results",
    "cmd_run",
    "cmd_status",
    "cmd_submit",
    "cmd_watch",
]


async def _run_and_print(
    args: argparse.Namespace, settings: Settings, tasks: Sequence[AgentTask], *, name: str, budget: Budget
) -> int:
    """``run`` and ``demo``: run a batch to the end with live progress, then print it (with
    ``--dashboard``, serve the dashboard meanwhile, and after until Ctrl-C)."""
    if args.dashboard:
        from coditect.cli.dashboard_commands import require_dashboard_extra

        require_dashboard_extra()
    async with (
        open_orchestrator(settings, command=args.command, shared=False) as orch,
        _dashboard(orch, args) as address,
    ):
        with progress(not args.json) as on_progress:
            started = time.monotonic()
            results = await orch.run_batch(
                tasks,
                batch_id=args.batch_id,
                name=name,
                timeout_s=args.timeout,
                on_progress=on_progress,
                budget_usd=budget.budget_usd,
                budget_tokens=budget.budget_tokens,
            )
            elapsed_s = time.monotonic() - started
        code = print_results(results, as_json=args.json, elapsed_s=elapsed_s)
        if address is not None:
            from coditect.cli.dashboard_commands import until_interrupted

            sys.stdout.flush()
            print(
                f"coditect: the run has ended; the dashboard stays at {address} until Ctrl-C", file=sys.stderr
            )
            await until_interrupted()
    return code


@contextlib.asynccontextmanager
async def _dashboard(orch: ProjectOrchestrator, args: argparse.Namespace) -> AsyncIterator[str | None]:
    if not args.dashboard:
        yield None
        return
    from coditect.cli.dashboard_commands import serving_dashboard

    async with serving_dashboard(orch, "127.0.0.1", args.dashboard_port) as address:
        print(f"coditect: dashboard at {address}", file=sys.stderr, flush=True)
        yield address


def _budget(args: argparse.Namespace, spec: BatchSpec) -> Budget:
    """The file's budget, with ``--budget-usd`` taking the place of its dollars."""
    from coditect.models import Budget

    if args.budget_usd is None:
        return spec.budget
    return Budget(budget_usd=args.budget_usd, budget_tokens=spec.budget.budget_tokens)


async def cmd_demo(args: argparse.Namespace) -> int:
    from coditect.cli.demo import DEMO_LATENCY_S, DEMO_TASKS
    from coditect.models import AgentTask, Budget

    overrides: dict[str, Any] = {
        "redis_url": "",
        "llm_provider": "offline",
        "llm_model": "",
        "use_direct_llm": True,
        "agents_file": None,  # the built-in agents, so a local agents file cannot send the demo elsewhere
    }
    settings = load_settings(args, **overrides)
    if "offline_latency_s" not in settings.model_fields_set:
        settings = settings.model_copy(update={"offline_latency_s": DEMO_LATENCY_S})
    tasks = [AgentTask.model_validate(task) for task in DEMO_TASKS]
    if not args.json:
        print(
            f"coditect demo: {len(tasks)} tasks on the embedded backend (in-process Redis and workers) "
            "with the offline provider\n"
        )
    return await _run_and_print(args, settings, tasks, name="demo", budget=Budget())


async def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    spec = load_batch(args.file, settings)
    return await _run_and_print(args, settings, spec.tasks, name=spec.name, budget=_budget(args, spec))


async def cmd_submit(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    require_redis(settings, "submit")
    spec = load_batch(args.file, settings)
    async with open_orchestrator(
        settings, command="submit", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
    ) as orch:
        budget = _budget(args, spec)
        batch_id = await orch.submit(
            spec.tasks,
            batch_id=args.batch_id,
            name=spec.name,
            budget_usd=budget.budget_usd,
            budget_tokens=budget.budget_tokens,
        )
    if args.json:
        print_json({"batch_id": batch_id})
    else:
        print(batch_id)
    return EXIT_OK


async def cmd_watch(args: argparse.Namespace) -> int:
    from coditect.client.waiter import DeadlineReached

    async with open_orchestrator(load_settings(args), command="watch", shared=True) as orch:
        with progress(not args.json) as on_progress:
            try:
                results = await orch.wait(args.batch, timeout_s=args.timeout, on_progress=on_progress)
            except DeadlineReached:
                results = await orch.results(args.batch)
                timed_out = True
            else:
                timed_out = False
    code = print_results(results, as_json=args.json)
    if timed_out:
        print(
            f"coditect: watch stopped after {args.timeout:g} s; batch {args.batch} goes on", file=sys.stderr
        )
        return EXIT_NOT_ALL_SUCCEEDED
    return code


async def cmd_status(args: argparse.Namespace) -> int:
    async with open_orchestrator(
        load_settings(args), command="status", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
    ) as orch:
        summary = await orch.summary(args.batch)
    from coditect.cli.render import status_summary

    if args.json:
        print_json({"batch_id": args.batch, **summary.to_json_dict()})
    else:
        print(status_summary(summary))
    return EXIT_OK if summary.counts["success"] == summary.total else EXIT_NOT_ALL_SUCCEEDED


async def cmd_results(args: argparse.Namespace) -> int:
    async with open_orchestrator(
        load_settings(args), command="results", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
    ) as orch:
        results = await orch.results(args.batch)
        summary = await orch.summary(args.batch)
    if args.json:
        print_json(
            {
                "batch_id": args.batch,
                "totals": summary.to_json_dict(),
                "results": [result.to_json_dict() for result in results],
            }
        )
        return exit_code(results)
    from coditect.cli.render import totals_lines

    code = print_results(results, as_json=False)
    print("\n".join(totals_lines(summary)))
    return code


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with open_orchestrator(
        load_settings(args), command="cancel", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
    ) as orch:
        queued, waiting, aborted = await orch.cancel(args.batch)
        finished = queued + waiting + aborted == 0 and (await orch.summary(args.batch)).finished
    if args.json:
        print_json({"batch_id": args.batch, "dequeued": queued, "unstarted": waiting, "aborted": aborted})
    elif finished:
        print(f"batch {args.batch} had already finished: nothing to cancel")
    else:
        print(
            f"batch {args.batch}: {queued} queued and {waiting} waiting task(s) cancelled, "
            f"{aborted} running asked to abort"
        )
    return EXIT_OK


async def cmd_events(args: argparse.Namespace) -> int:
    import json

    from coditect.cli.render import event_line

    settings = load_settings(args)
    async with open_orchestrator(settings, command="events", shared=True) as orch:
        if args.batch is not None and not args.follow:
            await orch.summary(args.batch)  # an unknown batch is an error, not silence
        async for event in orch.events(args.batch, args.since, follow=args.follow):
            print(json.dumps(event.to_json_dict()) if args.json else event_line(event), flush=args.follow)
    return EXIT_OK


async def cmd_batches(args: argparse.Namespace) -> int:
    async with open_orchestrator(
        load_settings(args), command="batches", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
    ) as orch:
        summaries = await orch.batches(args.limit)
    if args.json:
        print_json([summary.to_json_dict() for summary in summaries])
    else:
        from coditect.cli.render import batches_table

        print(batches_table(summaries))
    return EXIT_OK
