"""The dashboard from the command line: ``coditect dashboard``, and ``--dashboard`` on ``run`` and ``demo``.

``run --dashboard`` and ``demo --dashboard`` serve it on the run's own Redis (the embedded one when
there is no Redis URL) while the run goes on, and keep serving once it has ended, until Ctrl-C: a
demo ends in a second, and the point is to look at it. The exit code stays the run's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import signal
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from coditect.cli.shared import EXIT_OK, CliError, load_settings, open_orchestrator

if TYPE_CHECKING:
    from coditect.client.orchestrator import ProjectOrchestrator
    from coditect.settings import Settings

__all__ = ["cmd_dashboard", "require_dashboard_extra", "serving_dashboard", "until_interrupted"]

EXTRA_MODULES = ("starlette", "uvicorn", "jinja2", "multipart")
EXTRA_HINT = "the dashboard needs its extra: pip install 'coditect[dashboard]'"


def require_dashboard_extra() -> None:
    missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise CliError(f"{EXTRA_HINT} (missing: {', '.join(missing)})")


def _token(settings: Settings) -> str | None:
    if settings.dashboard_token is None:
        return None
    return settings.dashboard_token.get_secret_value() or None


@contextlib.asynccontextmanager
async def serving_dashboard(orch: ProjectOrchestrator, host: str, port: int) -> AsyncIterator[str]:
    """The dashboard served on ``orch`` while the block runs; yields its address."""
    from coditect.web import Dashboard, DashboardServer, check_bind

    check_bind(host, _token(orch.settings))
    server = DashboardServer(Dashboard.create(orch, host=host), host, port)
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()


async def until_interrupted() -> None:
    """Wait for Ctrl-C (SIGINT) or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def cmd_dashboard(args: argparse.Namespace) -> int:
    require_dashboard_extra()
    settings = load_settings(args)
    if settings.embedded:
        raise CliError(
            "'coditect dashboard' needs a shared Redis: set CODITECT_REDIS_URL or pass --redis-url "
            "(to see it without Redis: coditect demo --dashboard)"
        )
    from coditect.connections import redact_url
    from coditect.web import check_bind

    check_bind(args.host, _token(settings))  # before connecting: a refusal needs no Redis
    async with (
        open_orchestrator(settings, command="dashboard", shared=True) as orch,
        serving_dashboard(orch, args.host, args.port) as url,
    ):
        print(
            f"coditect: dashboard at {url} for Redis at {redact_url(settings.redis_url)} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        await until_interrupted()
    return EXIT_OK
