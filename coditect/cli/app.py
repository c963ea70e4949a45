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
import json
import logging
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from coditect.client.batchfile import BatchSpec
    from coditect.client.orchestrator import BatchProgress, ProjectOrchestrator
    from coditect.models import AgentTask, ExecutionResult
    from coditect.settings import Settings

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NOT_ALL_SUCCEEDED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
# submit, status, results and cancel take a few round trips; this long means Redis has gone silent.
ONE_SHOT_DEADLINE_S = 60.0


class CliError(Exception):
    """A problem with how the command was invoked; printed as one line, exit code 2."""


Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


# ---------------------------------------------------------------------------------------------
# Shared helpers: settings, the orchestrator, progress, and printing results with the exit code.


def _load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """``Settings()`` from the environment, ``--redis-url`` and ``overrides`` applied on top."""
    from pydantic import ValidationError

    from coditect.errors import ConfigurationError
    from coditect.secrets import register_secrets, settings_secrets
    from coditect.settings import Settings

    try:
        settings = Settings()
    except ValidationError as err:
        first = err.errors()[0]
        name = "_".join(str(part) for part in first["loc"]).upper()
        raise ConfigurationError(f"invalid setting CODITECT_{name}: {first['msg']}") from err
    redis_url = getattr(args, "redis_url", None)
    if redis_url is not None:
        overrides.setdefault("redis_url", redis_url)
    settings = settings.model_copy(update=overrides) if overrides else settings
    register_secrets(settings_secrets(settings))  # masked in log lines and in the error line
    return settings


def _require_redis(settings: Settings, command: str) -> None:
    if settings.embedded:
        raise CliError(
            f"'coditect {command}' needs a shared Redis: set CODITECT_REDIS_URL or pass --redis-url "
            "(the embedded in-process backend serves only 'coditect run' and 'coditect demo')"
        )


@contextlib.asynccontextmanager
async def _orchestrator(
    settings: Settings, *, command: str, shared: bool, answer_within_s: float | None = None
) -> AsyncIterator[ProjectOrchestrator]:
    """An open orchestrator; ``shared``: the command makes sense only with a Redis URL.

    A Redis error while the command runs becomes ``BackendUnavailableError`` naming the URL, and so
    do a Redis that stops answering for ``answer_within_s`` (a connection gone silent) and an
    outage that the orchestrator rode out until it gave up (``RedisOutageError``).
    """
    if shared:
        _require_redis(settings, command)
    from redis.exceptions import RedisError

    from coditect.client.orchestrator import ProjectOrchestrator
    from coditect.connections import redact_url
    from coditect.errors import BackendUnavailableError, RedisOutageError

    where = "the embedded Redis" if settings.embedded else f"Redis at {redact_url(settings.redis_url)}"
    try:
        async with asyncio.timeout(answer_within_s), ProjectOrchestrator(settings) as orch:
            yield orch
    except RedisOutageError as err:
        raise BackendUnavailableError(f"{where} did not answer for {err.limit_s:g} s") from err
    except RedisError as err:
        raise BackendUnavailableError(f"lost the connection to {where}: {err}") from err
    except TimeoutError as err:
        within = f" within {answer_within_s:g} s" if answer_within_s is not None else " in time"
        raise BackendUnavailableError(f"{where} did not answer{within}") from err


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[BatchProgress], None] | None]:
    """A progress callback that draws on stderr when it is a terminal; ``None`` otherwise."""
    stream = sys.stderr
    if not enabled or not stream.isatty():
        yield None
        return
    from coditect.cli.render import LiveLine, progress_line

    line = LiveLine(stream)

    def on_progress(progress: BatchProgress) -> None:
        line.show(progress_line(progress))

    try:
        yield on_progress
    finally:
        line.clear()


def _load_batch(file: str, settings: Settings) -> BatchSpec:
    """Read a batch file and check it (ids, dependencies, agents, scripts) before anything touches Redis."""
    from coditect.agents import AgentRegistry
    from coditect.client.batchfile import load_batch_file
    from coditect.client.orchestrator import check_batch
    from coditect.errors import TaskInputError

    spec = load_batch_file(Path(file))
    try:
        check_batch(spec.tasks, AgentRegistry.from_settings(settings), settings=settings)
    except TaskInputError as err:
        err.source = err.source or file
        raise
    return spec


def _exit_code(results: Sequence[ExecutionResult]) -> int:
    return EXIT_OK if all(result.succeeded for result in results) else EXIT_NOT_ALL_SUCCEEDED


def _print_results(
    results: Sequence[ExecutionResult], *, as_json: bool, elapsed_s: float | None = None
) -> int:
    """Print the results (a JSON list, or the table) on stdout and return the exit code."""
    if as_json:
        print(json.dumps([result.to_json_dict() for result in results], indent=2))
    else:
        from coditect.cli.render import results_table

        width = shutil.get_terminal_size((120, 24)).columns
        print(results_table(results, width=width, elapsed_s=elapsed_s))
    return _exit_code(results)


async def _run_and_print(
    args: argparse.Namespace, settings: Settings, tasks: Sequence[AgentTask], *, name: str
) -> int:
    """``run`` and ``demo``: run a batch to the end with live progress, then print it."""
    async with _orchestrator(settings, command=args.command, shared=False) as orch:
        with _progress(not args.json) as on_progress:
            started = time.monotonic()
            results = await orch.run_batch(
                tasks, batch_id=args.batch_id, name=name, timeout_s=args.timeout, on_progress=on_progress
            )
            elapsed_s = time.monotonic() - started
    return _print_results(results, as_json=args.json, elapsed_s=elapsed_s)


# ---------------------------------------------------------------------------------------------
# Commands


async def _cmd_demo(args: argparse.Namespace) -> int:
    from coditect.cli.demo import DEMO_LATENCY_S, DEMO_TASKS
    from coditect.models import AgentTask

    overrides: dict[str, Any] = {
        "redis_url": "",
        "llm_provider": "offline",
        "llm_model": "",
        "use_direct_llm": True,
        "agents_file": None,  # the built-in agents, so a local agents file cannot send the demo elsewhere
    }
    settings = _load_settings(args, **overrides)
    if "offline_latency_s" not in settings.model_fields_set:
        settings = settings.model_copy(update={"offline_latency_s": DEMO_LATENCY_S})
    tasks = [AgentTask.model_validate(task) for task in DEMO_TASKS]
    if not args.json:
        print(
            f"coditect demo: {len(tasks)} tasks on the embedded backend (in-process Redis and workers) "
            "with the offline provider\n"
        )
    return await _run_and_print(args, settings, tasks, name="demo")


async def _cmd_run(args: argparse.Namespace) -> int:
    settings = _load_settings(args)
    spec = _load_batch(args.file, settings)
    return await _run_and_print(args, settings, spec.tasks, name=spec.name)


async def _cmd_submit(args: argparse.Namespace) -> int:
    settings = _load_settings(args)
    _require_redis(settings, "submit")
    spec = _load_batch(args.file, settings)
    async with _orchestrator(
        settings, command="submit", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
    ) as orch:
        batch_id = await orch.submit(spec.tasks, batch_id=args.batch_id, name=spec.name)
    print(json.dumps({"batch_id": batch_id}) if args.json else batch_id)
    return EXIT_OK


async def _cmd_status(args: argparse.Namespace) -> int:
    async with _orchestrator(
        _load_settings(args), command="status", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
    ) as orch:
        results = await orch.results(args.batch)
    from coditect.cli.render import status_counts, status_summary

    if args.json:
        print(json.dumps({"batch_id": args.batch, "total": len(results), "counts": status_counts(results)}))
    else:
        print(status_summary(args.batch, results))
    return _exit_code(results)


async def _cmd_results(args: argparse.Namespace) -> int:
    async with _orchestrator(
        _load_settings(args), command="results", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
    ) as orch:
        results = await orch.results(args.batch)
    return _print_results(results, as_json=args.json)


async def _cmd_cancel(args: argparse.Namespace) -> int:
    async with _orchestrator(
        _load_settings(args), command="cancel", shared=True, answer_within_s=ONE_SHOT_DEADLINE_S
    ) as orch:
        dequeued, aborted = await orch.cancel(args.batch)
    if args.json:
        print(json.dumps({"batch_id": args.batch, "dequeued": dequeued, "aborted": aborted}))
    else:
        print(f"batch {args.batch}: {dequeued} dequeued before starting, {aborted} running asked to abort")
    return EXIT_OK


async def _cmd_watch(args: argparse.Namespace) -> int:
    from coditect.errors import TaskInputError

    async with _orchestrator(_load_settings(args), command="watch", shared=True) as orch:
        record = await orch.store.load(args.batch)
        if record is None:
            raise TaskInputError(
                f"no batch {args.batch!r} (unknown, or its results have expired)", field="batch"
            )
        with _progress(not args.json) as on_progress:
            found = await orch.wait(args.batch, record.task_ids, on_progress=on_progress)
    return _print_results([found[task_id] for task_id in record.task_ids], as_json=args.json)


async def _cmd_worker(args: argparse.Namespace) -> int:
    settings = _load_settings(args)
    if settings.embedded:
        raise CliError(
            "a separate worker process needs a shared Redis: set CODITECT_REDIS_URL or pass --redis-url "
            "(without one, 'coditect run' and 'coditect demo' start their own in-process workers)"
        )
    from redis.exceptions import RedisError

    from coditect.connections import redact_url, redis_settings_from
    from coditect.engine.worker import CoditectWorker
    from coditect.errors import BackendUnavailableError
    from coditect.jobs import SETTINGS_KEY, worker_options

    # Built inside the running loop: ARQ installs its SIGINT/SIGTERM handlers on this loop, and on a
    # signal it cancels the worker's main task, which is how a worker is meant to stop.
    worker = CoditectWorker(
        **worker_options(settings),
        redis_settings=redis_settings_from(settings),
        burst=args.burst,
        ctx={SETTINGS_KEY: settings},
    )
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # this command itself is being cancelled, not the worker stopped by a signal
        logger.info("worker stopped by a signal")
    except (RedisError, OSError) as err:
        raise BackendUnavailableError(
            f"cannot reach Redis at {redact_url(settings.redis_url)}: {err}"
        ) from err
    finally:
        await worker.close()  # lets running jobs record their outcome, runs on_shutdown, closes the pool
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# Parser and entry point


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of this command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"coditect: error: {message} (see '{self.prog} --help')\n")


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return seconds


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

    demo = command("demo", _cmd_demo, "run a sample project in-process with the offline provider")
    as_json(demo)
    demo.set_defaults(batch_id=None, timeout=None)

    run = command("run", _cmd_run, "run a batch file and wait for its results")
    run.add_argument("file", metavar="FILE", help="batch file (JSON, or TOML with a .toml suffix)")
    redis_url(run)
    as_json(run)
    run.add_argument(
        "--timeout", type=_positive_seconds, metavar="SECONDS", help="give up on unfinished tasks"
    )
    run.add_argument("--batch-id", metavar="ID", help="default: a new random id")

    worker = command("worker", _cmd_worker, "run a worker process for the queue (needs a shared Redis)")
    redis_url(worker)
    worker.add_argument("--burst", action="store_true", help="stop once the queue is empty")

    submit = command("submit", _cmd_submit, "enqueue a batch file for the workers and print its batch id")
    submit.add_argument("file", metavar="FILE", help="batch file (JSON, or TOML with a .toml suffix)")
    redis_url(submit)
    submit.add_argument("--batch-id", metavar="ID", help="default: a new random id")
    as_json(submit, '{"batch_id": ...}')

    for name, handler, help_text, what in (
        ("status", _cmd_status, "count a batch's tasks per status", "the counts as JSON"),
        ("results", _cmd_results, "print a batch's results", "the results as a JSON list"),
        (
            "cancel",
            _cmd_cancel,
            "cancel a batch: dequeue waiting tasks, abort running ones",
            "the counts as JSON",
        ),
        (
            "watch",
            _cmd_watch,
            "show a submitted batch's progress until it finishes",
            "the results as a JSON list",
        ),
    ):
        sub = command(name, handler, help_text)
        sub.add_argument("batch", metavar="BATCH", help="batch id, as printed by 'coditect submit'")
        redis_url(sub)
        as_json(sub, what)
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

    from coditect.errors import BackendUnavailableError, ConfigurationError, TaskInputError

    with _logging(args.command):
        try:
            return asyncio.run(handler(args))
        except (CliError, TaskInputError, ConfigurationError, BackendUnavailableError) as err:
            _fail(" ".join(str(err).split()))
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            _fail("interrupted")
            return EXIT_INTERRUPTED
