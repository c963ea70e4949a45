"""Commands about workers: run one, check who is alive, and the dead-letter list."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import TYPE_CHECKING, Any

from coditect.cli.shared import (
    EXIT_NOT_ALL_SUCCEEDED,
    EXIT_OK,
    ONE_SHOT_DEADLINE_S,
    CliError,
    load_settings,
    open_orchestrator,
    print_json,
)

if TYPE_CHECKING:
    from coditect.settings import Settings

__all__ = ["cmd_dead_letters", "cmd_schedule", "cmd_worker"]

logger = logging.getLogger(__name__)


async def cmd_worker(args: argparse.Namespace) -> int:
    overrides = {"metrics_port": args.metrics_port} if getattr(args, "metrics_port", None) is not None else {}
    settings = load_settings(args, **overrides)
    if settings.embedded:
        raise CliError(
            "a separate worker process needs a shared Redis: set CODITECT_REDIS_URL or pass --redis-url "
            "(without one, 'coditect run' and 'coditect demo' start their own in-process workers)"
        )
    if args.check:
        return await _check(settings)
    from redis.exceptions import RedisError

    from coditect.connections import redact_url
    from coditect.engine.context import SETTINGS_KEY
    from coditect.engine.create import create_worker
    from coditect.errors import BackendUnavailableError
    from coditect.redis_errors import refusal, short_error

    # Built inside the running loop: ARQ installs its SIGINT/SIGTERM handlers on this loop, and on a
    # signal it cancels the worker's main task, which is how a worker is meant to stop.
    worker = create_worker(settings, burst=args.burst, ctx={SETTINGS_KEY: settings})
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # this command itself is being cancelled, not the worker stopped by a signal
        logger.info("worker stopped by a signal")
    except (RedisError, OSError) as err:
        refused = refusal(err, redact_url(settings.redis_url)) if isinstance(err, RedisError) else None
        if refused is not None:
            raise refused from err
        raise BackendUnavailableError(
            f"cannot reach Redis at {redact_url(settings.redis_url)}: {short_error(err)}"
        ) from err
    finally:
        await worker.close()  # lets running jobs record their outcome, runs on_shutdown, closes the pool
    return EXIT_OK


async def _check(settings: Settings) -> int:
    """``worker --check``: the live workers on this queue; exit 0 if there is one, 1 if none."""
    from coditect.engine.registry import live_workers

    async with open_orchestrator(
        settings, command="worker --check", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
    ) as orch:
        alive = await live_workers(orch.redis, settings.queue_name)
    if not alive:
        print(f"no worker is alive on queue {settings.queue_name}")
        return EXIT_NOT_ALL_SUCCEEDED
    from coditect.cli.render import workers_table

    print(workers_table(alive))
    return EXIT_OK


async def cmd_dead_letters(args: argparse.Namespace) -> int:
    from coditect.keys import DEAD_LETTERS_KEY

    # One transaction: --clear deletes exactly what was listed, not an entry pushed meanwhile.
    async with (
        open_orchestrator(
            load_settings(args), command="dead-letters", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
        ) as orch,
        orch.redis.pipeline(transaction=True) as pipe,
    ):
        pipe.lrange(DEAD_LETTERS_KEY, 0, -1)
        if args.clear:
            pipe.delete(DEAD_LETTERS_KEY)
        raw, *_ = await pipe.execute()
    entries = [_dead_letter(item) for item in raw]
    if args.json:
        print_json(entries)
    elif not entries:
        print("no dead letters")
    else:
        for entry in entries:
            print(f"{entry.get('job_id') or '?'}: {entry.get('reason') or '?'}")
    if args.clear and not args.json:
        print(f"cleared {len(entries)} dead letter(s)")
    return EXIT_OK


async def cmd_schedule(args: argparse.Namespace) -> int:
    """The scheduled batches of ``CODITECT_SCHEDULE_FILE``, each with its next run (and, with a
    Redis URL, the batch its last tick submitted)."""
    from coditect.agents import AgentRegistry
    from coditect.engine.schedule import describe, load_schedules
    from coditect.keys import SCHEDULES_KEY

    settings = load_settings(args)
    if settings.schedule_file is None:
        raise CliError("CODITECT_SCHEDULE_FILE is not set: there are no scheduled batches to show")
    entries = describe(load_schedules(settings.schedule_file, AgentRegistry.from_settings(settings)))
    last: dict[str, str] = {}
    if not settings.embedded:
        async with open_orchestrator(
            settings, command="schedule", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
        ) as orch:
            raw = await orch.redis.hgetall(SCHEDULES_KEY)  # type: ignore[misc]
        last = {name.decode(): batch.decode() for name, batch in raw.items()}
    for entry in entries:
        entry["last_batch_id"] = last.get(str(entry["name"]))
    if args.json:
        print_json(entries)
        return EXIT_OK
    if not entries:
        print("no schedules")
        return EXIT_OK
    headers = ("SCHEDULE", "CRON", "NEXT RUN (UTC)", "TASKS", "LAST BATCH")
    rows = [
        (str(e["name"]), str(e["cron"]), str(e["next_run"]), str(e["tasks"]), str(e["last_batch_id"] or "-"))
        for e in entries
    ]
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    for row in (headers, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _dead_letter(raw: bytes) -> dict[str, Any]:
    """An entry of the list as the engine wrote it, or what can be shown of one somebody else pushed."""
    import json

    try:
        entry = json.loads(raw)
    except ValueError:
        entry = None
    if isinstance(entry, dict):
        return entry
    shown = raw[:100].decode(errors="backslashreplace")
    return {"job_id": None, "reason": f"not an entry coditect wrote: {shown}"}
