"""Logging for worker processes: coditect's records beside ARQ's, in ARQ's format, secrets masked.

Secrets are kept out of log records where they are made (keys live in ``SecretStr``, provider
errors are redacted, ARQ's ``log_results`` is off); ``SecretsFilter`` is the defence in depth on
every handler coditect sets up or finds: it masks Anthropic/OpenAI-style keys (``sk-ant-...``),
bearer tokens, ``x-api-key``/``api_key`` values and passwords in Redis URLs.

``arq --custom-log-dict coditect.logs.LOG_CONFIG coditect.jobs.WorkerSettings`` uses ``LOG_CONFIG``;
``ensure_worker_logging`` (called by every worker on start-up) puts the filter on the handlers ARQ's
own log configuration made, and on any handler above them.
"""

from __future__ import annotations

import logging
import re
from typing import Any

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

MASK = "***"
_TOKEN = r"[^\s'\",;)}\]]+"
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bsk-ant-[A-Za-z0-9_-]+"), "sk-ant-" + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"), "sk-" + MASK),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1" + MASK),
    # A header or keyword argument: x-api-key: v, 'x-api-key': 'v', api_key=v, "api_key": "v".
    (re.compile(rf"(?i)(\bx-api-key['\"]?\s*[:=]\s*['\"]?){_TOKEN}"), r"\1" + MASK),
    (
        re.compile(rf"(?i)(\bapi[_-]?key['\"]?\s*=\s*['\"]?|['\"]api[_-]?key['\"]\s*:\s*['\"]){_TOKEN}"),
        r"\1" + MASK,
    ),
    # The password of redis://user:password@host, rediss:// and redis+sentinel://.
    (re.compile(r"(?i)(\brediss?(?:\+sentinel)?://[^:/@\s]*:)\S+@"), r"\1" + MASK + "@"),
)
_TRACEBACKS = logging.Formatter()


def redact_secrets(text: str) -> str:
    """``text`` with every API key, bearer token and Redis URL password replaced by ``***``."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class SecretsFilter(logging.Filter):
    """Masks secrets in a record's message, traceback and stack (see ``redact_secrets``).

    A handler filter sees every record the handler emits, propagated ones included (a logger's
    own filters see only the records logged on that very logger).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: the handler reports that itself
            return True
        masked = redact_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info)
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
