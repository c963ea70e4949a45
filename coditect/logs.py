"""Logging for worker processes: coditect's records beside ARQ's, in ARQ's format, secrets masked.

Secrets are kept out of log records where they are made (keys live in ``SecretStr``, provider
errors are redacted, ARQ's ``log_results`` is off); ``SecretsFilter`` is the defence in depth on
every handler coditect sets up or finds. It masks what looks like a secret (``sk-ant-...`` keys,
bearer tokens, ``x-api-key``/``api_key`` values, passwords in URLs) and any run of 8 or more
characters of the secrets this process uses (see ``coditect.secrets``).

``arq --custom-log-dict coditect.logs.LOG_CONFIG coditect.jobs.WorkerSettings`` uses ``LOG_CONFIG``;
``ensure_worker_logging`` (called by every worker on start-up) puts the filter on the handlers ARQ's
own log configuration made, and on any handler above them.
"""

from __future__ import annotations

import logging
from typing import Any

from coditect.secrets import Redactor, redact_secrets, registered_redactor

__all__ = [
    "FORMAT",
    "LOG_CONFIG",
    "SecretsFilter",
    "ensure_worker_logging",
    "install_secrets_filter",
    "redact_secrets",
]

FORMAT = "%(asctime)s: %(message)s"

LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"coditect.secrets": {"()": "coditect.logs.SecretsFilter"}},
    "handlers": {
        "coditect.standard": {
            "class": "logging.StreamHandler",
            "formatter": "coditect.standard",
            "filters": ["coditect.secrets"],
        }
    },
    "formatters": {"coditect.standard": {"format": FORMAT, "datefmt": "%H:%M:%S"}},
    "loggers": {
        "arq": {"handlers": ["coditect.standard"], "level": "INFO"},
        "coditect": {"handlers": ["coditect.standard"], "level": "INFO"},
    },
}

_TRACEBACKS = logging.Formatter()


class SecretsFilter(logging.Filter):
    """Masks secrets in a record's message, traceback and stack.

    ``redactor``: by default the process's registry (``coditect.secrets.registered_redactor``), as
    it is when each record passes. A handler filter sees every record the handler emits, propagated
    ones included (a logger's own filters see only the records logged on that very logger).
    """

    def __init__(self, name: str = "", *, redactor: Redactor | None = None) -> None:
        super().__init__(name)
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = (self.redactor or registered_redactor()).redact
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: the handler reports that itself
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_secrets_filter(*logger_names: str) -> None:
    """Put a ``SecretsFilter`` on every handler that records of these loggers reach."""
    for name in logger_names:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            for handler in logger.handlers:
                if not any(isinstance(f, SecretsFilter) for f in handler.filters):
                    handler.addFilter(SecretsFilter())
            logger = logger.parent if logger.propagate else None


def ensure_worker_logging() -> None:
    """Give the ``coditect`` logger a stderr handler when nothing configured one; mask secrets.

    ``arq coditect.jobs.WorkerSettings`` configures only the ``arq`` logger; without this a worker
    started that way would print none of coditect's own lines.
    """
    logger = logging.getLogger("coditect")
    if not logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    install_secrets_filter("coditect", "arq")
