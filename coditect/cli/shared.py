"""What every command shares: settings, the orchestrator, progress on a terminal, printing results.

Only the standard library is imported at module level (``coditect --help`` must start fast); each
helper imports the heavy modules it needs when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coditect.client.batchfile import BatchSpec
    from coditect.client.orchestrator import ProjectOrchestrator
    from coditect.client.progress import BatchProgress
    from coditect.models import ExecutionResult
    from coditect.settings import Settings

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_ALL_SUCCEEDED",
    "EXIT_OK",
    "ONE_SHOT_DEADLINE_S",
    "CliError",
    "exit_code",
    "load_batch",
    "load_settings",
    "open_orchestrator",
    "print_json",
    "print_results",
    "progress",
    "require_redis",
]

EXIT_OK = 0
EXIT_NOT_ALL_SUCCEEDED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
# Whoever read stdout stopped reading (`coditect events --follow | head`): as a shell reports SIGPIPE.
EXIT_BROKEN_PIPE = 141
# status, results, cancel and the like take a few round trips; this long means Redis has gone silent.
ONE_SHOT_DEADLINE_S = 60.0


class CliError(Exception):
    """A problem with how the command was invoked; printed as one line, exit code 2."""


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
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


def require_redis(settings: Settings, command: str) -> None:
    if settings.embedded:
        raise CliError(
            f"'coditect {command}' needs a shared Redis: set CODITECT_REDIS_URL or pass --redis-url "
            "(the embedded in-process backend serves only 'coditect run' and 'coditect demo')"
        )


@contextlib.asynccontextmanager
async def open_orchestrator(
    settings: Settings, *, command: str, shared: bool, answer_within_s: float | None = None
) -> AsyncIterator[ProjectOrchestrator]:
    """An open orchestrator; ``shared``: the command makes sense only with a Redis URL.

    A Redis error while the command runs, a Redis that stays unreachable past the orchestrator's
    patience, and one that stops answering for ``answer_within_s`` all become one
    ``BackendUnavailableError`` naming the URL (its password masked).
    """
    if shared:
        require_redis(settings, command)
    from redis.exceptions import RedisError

    from coditect.client.orchestrator import ProjectOrchestrator
    from coditect.connections import redact_url
    from coditect.errors import BackendUnavailableError, RedisOutageError
    from coditect.redis_errors import refusal, short_error

    where = "the embedded Redis" if settings.embedded else f"Redis at {redact_url(settings.redis_url)}"
    try:
        async with asyncio.timeout(answer_within_s), ProjectOrchestrator(settings) as orch:
            yield orch
    except RedisOutageError as err:
        raise BackendUnavailableError(f"{where} did not answer for {err.limit_s:g} s") from err
    except RedisError as err:
        refused = refusal(err, "" if settings.embedded else redact_url(settings.redis_url))
        if refused is not None:
            raise refused from err
        raise BackendUnavailableError(f"lost the connection to {where}: {short_error(err)}") from err
    except TimeoutError as err:
        within = f" within {answer_within_s:g} s" if answer_within_s is not None else " in time"
        raise BackendUnavailableError(f"{where} did not answer{within}") from err


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[Callable[[BatchProgress], None] | None]:
    """A progress callback that draws on stderr when it is a terminal; ``None`` otherwise."""
    stream = sys.stderr
    if not enabled or not stream.isatty():
        yield None
        return
    from coditect.cli.render import LiveLine, progress_line

    line = LiveLine(stream)

    def on_progress(snapshot: BatchProgress) -> None:
        line.show(progress_line(snapshot))

    try:
        yield on_progress
    finally:
        line.clear()


def load_batch(file: str, settings: Settings) -> BatchSpec:
    """Read a batch file and check it (ids, dependencies, agents, scripts) before anything touches Redis."""
    from coditect.agents import AgentRegistry
    from coditect.client.batchfile import load_batch_file
    from coditect.client.graph import check_batch
    from coditect.errors import TaskInputError

    spec = load_batch_file(Path(file))
    try:
        local = settings if settings.embedded else None  # scripts are checked where they run
        check_batch(spec.tasks, AgentRegistry.from_settings(settings), settings=local)
    except TaskInputError as err:
        err.source = err.source or file
        raise
    return spec


def exit_code(results: Sequence[ExecutionResult]) -> int:
    return EXIT_OK if all(result.succeeded for result in results) else EXIT_NOT_ALL_SUCCEEDED


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def print_results(
    results: Sequence[ExecutionResult], *, as_json: bool, elapsed_s: float | None = None
) -> int:
    """Print the results (a JSON list, or the table) on stdout and return the exit code."""
    if as_json:
        print_json([result.to_json_dict() for result in results])
    else:
        from coditect.cli.render import results_table

        width = shutil.get_terminal_size((120, 24)).columns
        print(results_table(results, width=width, elapsed_s=elapsed_s))
    return exit_code(results)
