"""Errors raised by coditect.

The tree::

    CoditectError
    ├── ConfigurationError          a setting, agent or provider that cannot work
    ├── TaskInputError              a batch file or task payload that is invalid (names file and field)
    ├── BackendUnavailableError     Redis cannot be reached (names the URL, never its password)
    │   ├── RedisOutageError        Redis stayed unreachable past the outage limit (60 s)
    │   └── RedisRefusedError       Redis answered no: out of memory, the ACL, a replica, loading
    ├── ScriptError                 a legacy agent script exited non-zero (carries its stderr)
    ├── CapacityDeferred            no rate-limit capacity soon enough: run again after ``delay_s``
    │   └── BudgetDeferred          no room in the batch's budget until its running tasks settle
    └── ProviderError               an LLM provider or agent endpoint call failed
        ├── TransientProviderError  worth retrying: 429, 529, 5xx, connection errors, timeouts
        └── PermanentProviderError  retrying cannot help: 400, 401, 403, 404, 422

Provider errors are translated once, at the HTTP boundary of each provider, with ``raise ... from err``;
Redis errors at the client's boundary (``coditect.redis_errors``), in one line without arguments.
``CapacityDeferred`` (and ``BudgetDeferred``) is not a failure: nothing was sent, and the task goes back
to the queue without counting an attempt.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coditect.llm.base import RateLimitInfo

__all__ = [
    "BackendUnavailableError",
    "BudgetDeferred",
    "CapacityDeferred",
    "CoditectError",
    "ConfigurationError",
    "PermanentProviderError",
    "ProviderError",
    "RedisOutageError",
    "RedisRefusedError",
    "ScriptError",
    "TaskInputError",
    "TransientProviderError",
    "provider_error_for_status",
]

TRANSIENT_STATUSES = frozenset({408, 409, 429})
MAX_RETRY_AFTER_S = 300.0


class CoditectError(Exception):
    """Root of every error coditect raises on purpose."""


class ConfigurationError(CoditectError):
    """A setting, agent definition or provider choice that cannot work."""


class TaskInputError(CoditectError):
    """Invalid input: ``source`` names the file (or payload), ``field`` the offending field."""

    def __init__(self, message: str, *, source: str = "", field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.field = field

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.source, self.field) if part)
        return f"{where}: {self.message}" if where else self.message


class BackendUnavailableError(CoditectError):
    """Redis could not be reached."""


class RedisOutageError(BackendUnavailableError):
    """Redis was unreachable (refused, dropped or silent connections) for ``limit_s`` in a row.

    Raised by the retry loops that ride out outages once they give up; the cause is the last error.
    """

    def __init__(self, limit_s: float, last_error: BaseException) -> None:
        detail = str(last_error) or type(last_error).__name__
        super().__init__(f"Redis did not answer for {limit_s:g} s (last error: {detail})")
        self.limit_s = limit_s


class RedisRefusedError(BackendUnavailableError):
    """Redis answered, and refused: ``cause`` is ``oom`` (maxmemory reached), ``acl`` (the Redis user may
    not run ``command``), ``readonly`` (a replica), ``loading`` (still reading its data), or ``error``."""

    def __init__(self, message: str, *, cause: str, command: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.command = command


class ScriptError(CoditectError):
    """A legacy agent script exited with a non-zero code."""

    def __init__(self, script: str, exit_code: int, stderr: str) -> None:
        super().__init__(f"script {script} exited with code {exit_code}")
        self.script = script
        self.exit_code = exit_code
        self.stderr = stderr

    def __str__(self) -> str:
        tail = self.stderr.strip()[-2000:]
        return f"script {self.script} exited with code {self.exit_code}" + (f": {tail}" if tail else "")


class CapacityDeferred(CoditectError):
    """The shared rate limit has no capacity for this call within the horizon; nothing was sent.

    Run the task again after ``delay_s`` seconds: by then capacity frees within the horizon (unless
    other workers take it first). Retrying sooner would only ask again.
    """

    waiting_for = "capacity"  # what the task waits for, in the worker's log line

    def __init__(self, delay_s: float, *, provider: str = "", model: str = "") -> None:
        super().__init__(self._message(delay_s, provider, model))
        self.delay_s = delay_s
        self.provider = provider
        self.model = model

    @staticmethod
    def _message(delay_s: float, provider: str, model: str) -> str:
        where = f" for {provider}/{model}" if provider else ""
        return f"no rate-limit capacity{where} for {delay_s:.3f} s; run again after it"


class BudgetDeferred(CapacityDeferred):
    """The batch's budget has room for this task only once the tasks running now settle; nothing ran.

    Run the task again after ``delay_s``, as for ``CapacityDeferred``.
    """

    waiting_for = "its batch's budget"

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s)

    @staticmethod
    def _message(delay_s: float, provider: str, model: str) -> str:
        return (
            f"no room in the batch's budget until its running tasks settle; run again after {delay_s:.3f} s"
        )


class ProviderError(CoditectError):
    """An LLM provider or agent endpoint call failed."""

    transient = False

    def __init__(self, provider: str, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.message = message
        self.status_code = status_code

    def __str__(self) -> str:
        status = f" (HTTP {self.status_code})" if self.status_code is not None else ""
        return f"{self.provider}{status}: {self.message}"


class TransientProviderError(ProviderError):
    """A failure that may go away: the queue retries it with backoff, honouring ``retry_after_s``."""

    transient = True

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        rate_limit: RateLimitInfo | None = None,
    ) -> None:
        super().__init__(provider, message, status_code=status_code)
        self.retry_after_s = retry_after_s
        # The provider's rate-limit headers on this error, when it sent any (429s usually do).
        self.rate_limit = rate_limit


class PermanentProviderError(ProviderError):
    """A failure that retrying cannot fix (bad request, bad key, no permission, unknown model)."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``retry-after`` header (numeric form only), capped at ``MAX_RETRY_AFTER_S``."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def provider_error_for_status(
    provider: str, status_code: int, message: str, *, retry_after: str | None = None
) -> ProviderError:
    """Classify an HTTP error status into a transient or permanent provider error."""
    hint = _status_hint(provider, status_code)
    text = f"{message} ({hint})" if hint and hint not in message else message
    if status_code in TRANSIENT_STATUSES or status_code >= 500:
        return TransientProviderError(
            provider, text, status_code=status_code, retry_after_s=parse_retry_after(retry_after)
        )
    return PermanentProviderError(provider, text, status_code=status_code)


def _status_hint(provider: str, status_code: int) -> str:
    if status_code == 401:
        # Providers other than these two are agent endpoints (api mode): "agent <name> endpoint".
        key = _KEY_SETTINGS.get(provider, "the agent endpoint's credentials")
        return f"the API key was refused; check {key}"
    return _STATUS_HINTS.get(status_code, "")


_KEY_SETTINGS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "CODITECT_OPENAI_API_KEY"}
_STATUS_HINTS = {
    400: "the request was rejected; check the model name, max_tokens and prompt",
    403: "the API key has no permission for this model or resource",
    404: "not found; check the base URL and model name",
    422: "the request was not understood; check the model parameters",
    429: "rate limited",
    529: "provider overloaded",
}
