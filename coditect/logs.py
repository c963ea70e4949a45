"""Logging for worker processes: coditect's records beside ARQ's, in ARQ's format."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["LOG_CONFIG", "ensure_worker_logging"]

FORMAT = "%(asctime)s: %(message)s"

LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"coditect.standard": {"class": "logging.StreamHandler", "formatter": "coditect.standard"}},
    "formatters": {"coditect.standard": {"format": FORMAT, "datefmt": "%H:%M:%S"}},
    "loggers": {
        "arq": {"handlers": ["coditect.standard"], "level": "INFO"},
        "coditect": {"handlers": ["coditect.standard"], "level": "INFO"},
    },
}


def ensure_worker_logging() -> None:
    """Give the ``coditect`` logger a stderr handler when nothing configured one.

    ``arq coditect.jobs.WorkerSettings`` configures only the ``arq`` logger; without this a worker
    started that way would print none of coditect's own lines.
    """
    logger = logging.getLogger("coditect")
    if logger.hasHandlers():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
