"""The ``coditect`` command: run, submit and follow batches of agent tasks; start workers.

Exit codes: 0 every task succeeded, 1 some task did not (or has not finished), 2 bad input or an
unusable configuration (one line on stderr, no traceback), 130 interrupted.

Only the standard library is imported at module level: ``coditect --help`` must start in well under
0.3 s, and the orchestrator (ARQ, redis, pydantic) and the provider SDKs cost far more than that.
Each command imports what it needs. This is the one place in coditect that calls ``asyncio.run()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, NoReturn

from coditect.cli import batch_commands as batches
from coditect.cli import dashboard_commands as dashboards
from coditect.cli import worker_commands as workers
from coditect.cli.shared import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, CliError

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of this command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"coditect: error: {message} (see '{self.prog} --help')\n")


def _positive(unit: str) -> Callable[[str], float]:
    """An argparse type: a finite number greater than zero, of ``unit``."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not number > 0 or number == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive number of {unit}, got {value!r}")
        return number

    return parse


_positive_seconds = _positive("seconds")
_positive_dollars = _positive("US dollars")


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) < 65_536:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), got {value!r}")
    return int(value)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The ``coditect`` argument parser; each sub-command sets ``handler`` to its coroutine."""
    parser = _Parser(
        prog="coditect",
        description="Run LLM agent tasks in parallel on ARQ workers over Redis "
        "(embedded in-process Redis when no CODITECT_REDIS_URL is set).",
        epilog="Exit codes: 0 all tasks succeeded, 1 some did not, 2 bad input or configuration.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def redis_url(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--redis-url",
            metavar="URL",
            help="Redis of the workers (default: CODITECT_REDIS_URL; empty: embedded)",
        )

    def as_json(sub: argparse.ArgumentParser, what: str = "the results as a JSON list") -> None:
        sub.add_argument("--json", action="store_true", help=f"print only {what} on stdout")

    def batch_file(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("file", metavar="FILE", help="batch file (JSON, or TOML with a .toml suffix)")
        sub.add_argument("--batch-id", metavar="ID", help="default: a new random id")
        sub.add_argument(
            "--budget-usd",
            type=_positive_dollars,
            metavar="USD",
            help="end the tasks not yet started once the batch has spent this (default: the file's)",
        )

    def batch_arg(sub: argparse.ArgumentParser, *, optional: bool = False) -> None:
        help_text = "batch id, as printed by 'coditect submit'"
        if optional:
            sub.add_argument("batch", metavar="BATCH", nargs="?", help=help_text + " (default: every batch)")
        else:
            sub.add_argument("batch", metavar="BATCH", help=help_text)

    def with_dashboard(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--dashboard",
            action="store_true",
            help="serve the web dashboard on 127.0.0.1 while it runs, and after, until Ctrl-C",
        )
        sub.add_argument(
            "--dashboard-port",
            type=_port,
            default=8000,
            metavar="PORT",
            help="its port (default 8000; 0: any free)",
        )

    demo = command("demo", batches.cmd_demo, "run a sample project in-process with the offline provider")
    as_json(demo)
    with_dashboard(demo)
    demo.set_defaults(batch_id=None, timeout=None)

    run = command("run", batches.cmd_run, "run a batch file and wait for its results")
    batch_file(run)
    redis_url(run)
    as_json(run)
    run.add_argument("--timeout", type=_positive_seconds, metavar="SECONDS", help="end unfinished tasks then")
    with_dashboard(run)

    worker = command(
        "worker", workers.cmd_worker, "run a worker process for the queue (needs a shared Redis)"
    )
    redis_url(worker)
    worker.add_argument("--burst", action="store_true", help="stop once the queue is empty")
    worker.add_argument(
        "--check", action="store_true", help="say which workers on the queue are alive; exit 1 if none"
    )
    worker.add_argument(
        "--metrics-port",
        type=_port,
        metavar="N",
        help="serve Prometheus metrics on this port (CODITECT_METRICS_PORT)",
    )

    submit = command("submit", batches.cmd_submit, "submit a batch file to the workers and print its id")
    batch_file(submit)
    redis_url(submit)
    as_json(submit, '{"batch_id": ...}')

    watch = command("watch", batches.cmd_watch, "show a batch's progress until it finishes, then its results")
    batch_arg(watch)
    redis_url(watch)
    as_json(watch)
    watch.add_argument("--timeout", type=_positive_seconds, metavar="SECONDS", help="stop watching then")

    for name, handler, help_text, what in (
        ("status", batches.cmd_status, "a batch's counts per status, tokens and cost", "the summary as JSON"),
        ("results", batches.cmd_results, "a batch's results and totals", "the results and totals as JSON"),
        ("cancel", batches.cmd_cancel, "cancel a batch: end waiting tasks, abort running ones", "the counts"),
    ):
        sub = command(name, handler, help_text)
        batch_arg(sub)
        redis_url(sub)
        as_json(sub, what)

    events = command("events", batches.cmd_events, "print a batch's lifecycle events (or every batch's)")
    batch_arg(events, optional=True)
    redis_url(events)
    events.add_argument("--since", metavar="ID", help="only events after this event id")
    events.add_argument("--follow", action="store_true", help="keep printing new events until interrupted")
    as_json(events, "JSON lines, one event per line")

    listing = command(
        "batches", batches.cmd_batches, "list recent batches with their counts, tokens and cost"
    )
    redis_url(listing)
    as_json(listing, "a JSON array of batches")
    listing.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="at most N (default 50)"
    )

    schedule = command("schedule", workers.cmd_schedule, "list the scheduled batches and their next run")
    redis_url(schedule)
    as_json(schedule, "a JSON array of schedules")

    dashboard = command(
        "dashboard", dashboards.cmd_dashboard, "serve the web dashboard of the batches and workers on a Redis"
    )
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs "
        "CODITECT_DASHBOARD_TOKEN)"
    )  # fmt: skip
    dashboard.add_argument(
        "--port", type=_port, default=8000, help="port to listen on (default 8000; 0: any free)"
    )
    redis_url(dashboard)

    dead = command("dead-letters", workers.cmd_dead_letters, "list queue entries set aside as unusable")
    redis_url(dead)
    as_json(dead, "a JSON array of entries")
    dead.add_argument("--clear", action="store_true", help="empty the list after printing it")
    return parser


def _log_format() -> str:
    """``CODITECT_LOG_FORMAT`` (from the environment or ``.env``); ``text`` when the settings are
    invalid, which the command itself then reports."""
    from pydantic import ValidationError

    from coditect.settings import Settings

    try:
        return Settings().log_format
    except ValidationError:
        return "text"


@contextlib.contextmanager
def _logging(command: str) -> Iterator[None]:
    """Log to stderr while one command runs: a worker's INFO lines, otherwise warnings only.

    Other libraries stay at WARNING (httpx would log every provider request at INFO). Lines are
    text, or JSON objects with ``CODITECT_LOG_FORMAT=json``; secrets are masked in both.
    """
    from coditect.logs import (
        DATE_FORMAT,
        FORMAT,
        JobContextFilter,
        JsonFormatter,
        SecretsFilter,
        TextFormatter,
    )

    root, arq_logger, own_logger = (
        logging.getLogger(),
        logging.getLogger("arq"),
        logging.getLogger("coditect"),
    )
    saved = [(each, each.level) for each in (root, arq_logger, own_logger)]
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SecretsFilter())
    handler.addFilter(JobContextFilter())
    root.setLevel(logging.WARNING)
    if command == "worker":
        handler.setFormatter(TextFormatter(FORMAT, DATE_FORMAT))
        arq_logger.setLevel(logging.INFO)
        own_logger.setLevel(logging.INFO)
    else:
        handler.setFormatter(TextFormatter("coditect: %(levelname)s: %(name)s: %(message)s"))
        # ARQ warns on each connection retry; the command reports the outcome itself, in one line.
        arq_logger.setLevel(logging.ERROR)
    if _log_format() == "json":
        handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for each, level in saved:
            each.setLevel(level)


def _fail(message: str) -> None:
    from coditect.secrets import registered_redactor

    print(f"coditect: error: {registered_redactor().redact(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``coditect`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    handler: Handler = args.handler
    # As `arq` does: python agents named "package.module:function" are found in the working directory.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())

    from coditect.client.waiter import BatchLost
    from coditect.errors import BackendUnavailableError, ConfigurationError, TaskInputError

    with _logging(args.command):
        try:
            return asyncio.run(handler(args))
        except (CliError, TaskInputError, ConfigurationError, BackendUnavailableError, BatchLost) as err:
            _fail(" ".join(str(err).split()))
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            _fail("interrupted")
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # Python would print another error flushing stdout at exit: point it at /dev/null first.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
