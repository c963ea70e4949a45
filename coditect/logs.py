"""Logging for workers and the CLI: coditect's records beside ARQ's, secrets masked, text or JSON.

Secrets are kept out of log records where they are made (keys live in ``SecretStr``, provider
errors are redacted, ARQ's ``log_results`` is off); ``SecretsFilter`` is the defence in depth on
every handler coditect sets up or finds. It masks what looks like a secret (``sk-ant-...`` keys,
bearer tokens, ``x-api-key``/``api_key`` values, passwords in URLs) and any run of 8 or more
characters of the secrets this process uses (see ``coditect.secrets``).

Inside ``job_log_context(...)`` every record carries the job's ``batch_id``, ``task_id``, ``job_id``,
``attempt`` and ``worker``: ``TextFormatter`` shows ``[batch/task]`` before the message and
``JsonFormatter`` (``CODITECT_LOG_FORMAT=json``) writes them as fields of its one-object lines.

``arq --custom-log-dict coditect.logs.LOG_CONFIG coditect.jobs.WorkerSettings`` uses ``LOG_CONFIG``;
``ensure_worker_logging`` (called by every worker on start-up) puts the filters on the handlers ARQ's
own log configuration made, and on any handler above them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from coditect.secrets import Redactor, redact_secrets, register_secrets, registered_redactor, settings_secrets

if TYPE_CHECKING:
    from coditect.settings import Settings

__all__ = [
    "DATE_FORMAT",
    "FORMAT",
    "JOB_FIELDS",
    "LOG_CONFIG",
    "JobContext",
    "JobContextFilter",
    "JsonFormatter",
    "SecretsFilter",
    "TextFormatter",
    "ensure_worker_logging",
    "install_secrets_filter",
    "job_log_context",
    "redact_secrets",
]

FORMAT = "%(asctime)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
JOB_FIELDS = ("batch_id", "task_id", "job_id", "attempt", "worker")

LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "coditect.secrets": {"()": "coditect.logs.SecretsFilter"},
        "coditect.job": {"()": "coditect.logs.JobContextFilter"},
    },
    "handlers": {
        "coditect.standard": {
            "class": "logging.StreamHandler",
            "formatter": "coditect.standard",
            "filters": ["coditect.secrets", "coditect.job"],
        }
    },
    "formatters": {
        "coditect.standard": {"()": "coditect.logs.TextFormatter", "fmt": FORMAT, "datefmt": DATE_FORMAT}
    },
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


@dataclass(frozen=True, slots=True)
class JobContext:
    """The job a record was logged in."""

    job_id: str
    batch_id: str | None = None
    task_id: str | None = None
    attempt: int | None = None
    worker: str | None = None


_current_job: ContextVar[JobContext | None] = ContextVar("coditect_job", default=None)


def job_log_context(
    *,
    job_id: str,
    batch_id: str | None = None,
    task_id: str | None = None,
    attempt: int | None = None,
    worker: str | None = None,
) -> AbstractContextManager[JobContext]:
    """Tag every record logged inside (in this asyncio task or thread) with the job's fields."""
    return _JobLogScope(
        JobContext(job_id=job_id, batch_id=batch_id, task_id=task_id, attempt=attempt, worker=worker)
    )


class _JobLogScope:
    """``job_log_context``'s manager: a plain class, as every job enters one and a generator-based
    ``contextlib.contextmanager`` costs several times more per use."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: JobContext) -> None:
        self._context = context

    def __enter__(self) -> JobContext:
        self._token = _current_job.set(self._context)
        return self._context

    def __exit__(self, *exc_info: object) -> None:
        _current_job.reset(self._token)


def job_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The job fields of ``record`` that are set: stamped by ``JobContextFilter``, else the current job."""
    stamped = {name: record.__dict__[name] for name in JOB_FIELDS if name in record.__dict__}
    if not stamped:
        context = _current_job.get()
        stamped = asdict(context) if context is not None else {}
    return {name: stamped[name] for name in JOB_FIELDS if stamped.get(name) is not None}


class JobContextFilter(logging.Filter):
    """Stamps each record with the fields of the job it was logged in (None outside a job).

    Fields passed with ``extra=`` are kept. Stamping when the record is handled, in the thread that
    logged it, keeps the fields right whichever thread formats the record later.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current_job.get()
        for name in JOB_FIELDS:
            if name not in record.__dict__:
                setattr(record, name, getattr(context, name) if context is not None else None)
        return True


class TextFormatter(logging.Formatter):
    """A ``logging.Formatter`` that puts ``[batch/task] `` before the message of a record from a job."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = job_fields(record)
        if not fields:
            return super().formatMessage(record)
        batch, task = fields.get("batch_id", "-"), fields.get("task_id", fields.get("job_id", "-"))
        message = record.message
        record.message = f"[{batch}/{task}] {message}"
        try:
            return super().formatMessage(record)
        finally:
            record.message = message


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the
    job's fields inside a job, and ``exception``/``stack`` when the record has them.

    Put a ``SecretsFilter`` before it on the handler: it masks the message and the traceback.
    """

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **job_fields(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ASCII escapes keep every line valid JSON and writable, even with a lone surrogate in it.
        return json.dumps(entry, default=str)


def _handlers(*logger_names: str) -> Iterator[logging.Handler]:
    """Every handler that records of these loggers reach, each once."""
    seen: set[int] = set()
    for name in logger_names:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            for handler in logger.handlers:
                if id(handler) not in seen:
                    seen.add(id(handler))
                    yield handler
            logger = logger.parent if logger.propagate else None


def install_secrets_filter(*logger_names: str) -> None:
    """Put a ``SecretsFilter`` on every handler that records of these loggers reach."""
    for handler in _handlers(*logger_names):
        if not any(isinstance(f, SecretsFilter) for f in handler.filters):
            handler.addFilter(SecretsFilter())


def ensure_worker_logging(settings: Settings | None = None) -> None:
    """Give the ``coditect`` logger a stderr handler when nothing configured one; mask secrets, tag
    job records, and write JSON lines when ``log_format`` is ``json``.

    ``arq coditect.jobs.WorkerSettings`` configures only the ``arq`` logger; without this a worker
    started that way would print none of coditect's own lines. ``settings`` (default: from the
    environment) gives the format and the secrets to mask.
    """
    if settings is None:
        from coditect.settings import Settings

        settings = Settings()
    register_secrets(settings_secrets(settings))
    logger = logging.getLogger("coditect")
    if not logger.hasHandlers():
        own = logging.StreamHandler()
        own.setFormatter(TextFormatter(FORMAT, DATE_FORMAT))
        logger.addHandler(own)
        logger.setLevel(logging.INFO)
    install_secrets_filter("coditect", "arq")
    for handler in _handlers("coditect", "arq"):
        if not any(isinstance(f, JobContextFilter) for f in handler.filters):
            handler.addFilter(JobContextFilter())
        if settings.log_format == "json" and not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter())
