"""The log configuration the benchmark starts coditect's workers with: no line per job.

    arq coditect.jobs.WorkerSettings --custom-log-dict benchmarks.worker_logs.NO_JOB_LINES

It is ``coditect.logs.LOG_CONFIG`` with the ``arq`` loggers at WARNING, so the worker's start-up
lines (the ``coditect`` logger) stay and ARQ's two INFO lines per job ("→ job", "← job") go, as
they go for the bare ARQ baseline (``benchmarks.arq_baseline.LOG_CONFIG``) and for every library of
the peer figures. The figures' targets were set on workers that logged no line per job; the
``throughput`` figure also measures the default (``Bench.coditect_workers_with_job_lines``).
"""

from __future__ import annotations

from typing import Any

from coditect.logs import LOG_CONFIG

__all__ = ["NO_JOB_LINES"]

NO_JOB_LINES: dict[str, Any] = {
    **LOG_CONFIG,
    "loggers": {**LOG_CONFIG["loggers"], "arq": {**LOG_CONFIG["loggers"]["arq"], "level": "WARNING"}},
}
