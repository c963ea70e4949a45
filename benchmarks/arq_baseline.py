"""Bare ARQ worker settings for the benchmark: one no-op job, ARQ's own defaults.

Started by ``benchmarks/executor_performance.py`` as::

    PYTHONPATH=<repo root> BENCH_ARQ_REDIS_URL=redis://127.0.0.1:<port>/0 \
        arq benchmarks.arq_baseline.WorkerSettings --custom-log-dict benchmarks.arq_baseline.LOG_CONFIG

Only what the benchmark sets through ``BENCH_ARQ_*`` differs from ARQ's defaults (``poll_delay`` 0.5 s,
``max_jobs`` 10, pickle serializer). ``LOG_CONFIG`` turns ARQ's per-job INFO lines off, as coditect's
workers log no line per job either; the ready line is logged by ``on_startup``, just before the poll
loop starts.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from arq.connections import RedisSettings

__all__ = ["LOG_CONFIG", "READY_LINE", "WorkerSettings", "noop"]

READY_LINE = "arq baseline worker ready"

logger = logging.getLogger(__name__)

LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "formatters": {"plain": {"format": "%(asctime)s: %(message)s", "datefmt": "%H:%M:%S"}},
    "loggers": {
        "arq": {"handlers": ["stderr"], "level": "WARNING"},
        __name__: {"handlers": ["stderr"], "level": "INFO"},
    },
}


async def noop(ctx: dict[str, Any], value: Any) -> Any:
    """The job: return the argument, so the caller can check that every job ran."""
    return value


async def startup(ctx: dict[str, Any]) -> None:
    logger.info("%s: pid %d", READY_LINE, os.getpid())


def _chosen_by_benchmark() -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "BENCH_ARQ_POLL_DELAY_S" in os.environ:
        options["poll_delay"] = float(os.environ["BENCH_ARQ_POLL_DELAY_S"])
    if "BENCH_ARQ_MAX_JOBS" in os.environ:
        options["max_jobs"] = int(os.environ["BENCH_ARQ_MAX_JOBS"])
    return options


# ARQ reads the settings from the class __dict__, so every attribute is set on the class itself.
# BENCH_ARQ_REDIS_URL is required: the baseline never falls back to a Redis on the default port.
WorkerSettings = type(
    "WorkerSettings",
    (),
    {
        "functions": [noop],
        "on_startup": startup,
        "redis_settings": RedisSettings.from_dsn(os.environ["BENCH_ARQ_REDIS_URL"]),
        **_chosen_by_benchmark(),
    },
)
