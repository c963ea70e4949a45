"""Turning HTTP failures into coditect provider errors: one helper set for every HTTP provider.

The Anthropic SDK runs on ``httpx2``, a fork of ``httpx`` that keeps httpx's exception and ``Timeout``
names; the OpenAI-compatible provider runs on ``httpx`` itself. These helpers accept either, so both
providers phrase, classify and redact their errors the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from coditect.errors import (
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    provider_error_for_status,
)
from coditect.llm.base import RateLimitInfo
from coditect.secrets import MASK, Redactor

__all__ = [
    "MAX_ERROR_TEXT_CHARS",
    "connection_error",
    "describe",
    "error_message",
    "malformed_response_error",
    "redact",
    "retry_after_header",
    "safe_url",
    "status_error",
    "timeout_error",
    "truncate",
]

MAX_ERROR_TEXT_CHARS = 500

# Class names shared by httpx and httpx2 -> the Timeout attribute that bounded the failed phase.
_TIMEOUT_PHASES = {"ConnectTimeout": "connect", "WriteTimeout": "write", "PoolTimeout": "pool"}


class TimeoutLike(Protocol):
    """``httpx.Timeout`` or ``httpx2.Timeout``."""

    connect: float | None
    read: float | None
    write: float | None
    pool: float | None


def truncate(text: str, limit: int = MAX_ERROR_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` masked, whole or any run of 8+ of its characters (some servers echo the
    key they refused, or its first or last characters)."""
    if not secret:
        return text
    return Redactor([secret]).redact_known(text.replace(secret, MASK))


def safe_url(url: str) -> str:
    """``url`` without user info or query, fit for an error message."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def error_message(status_code: int, body: object, *, secret: str | None = None) -> str:
    """The most useful message in an error body (parsed JSON, raw text or None), ``secret`` redacted.

    Looks for ``error.message`` (Anthropic, OpenAI, vLLM), then a string ``error`` (llama.cpp and
    others), then a top-level ``message`` or ``detail``; falls back to the body, truncated.
    """
    text = ""
    if isinstance(body, dict):
        error = body.get("error")
        candidates = (
            error.get("message") if isinstance(error, dict) else error,
            body.get("message"),
            body.get("detail"),
        )
        text = next((c.strip() for c in candidates if isinstance(c, str) and c.strip()), "")
    if not text:
        if isinstance(body, str):
            text = body.strip()
        elif body is not None:
            text = json.dumps(body, ensure_ascii=False, default=str)
    # Redact before truncating, so a cut can never leave part of the secret behind.
    return truncate(redact(text, secret)) if text else f"HTTP {status_code} with an empty body"


def retry_after_header(headers: Mapping[str, str]) -> str | None:
    """The ``retry-after`` value in seconds, preferring the more precise ``retry-after-ms``."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            seconds = float(millis) / 1000
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return str(seconds)
    return headers.get("retry-after")


def status_error(
    provider: str, status_code: int, body: object, headers: Mapping[str, str], *, secret: str | None
) -> ProviderError:
    """A transient or permanent error for a non-2xx response, by status, with its ``retry-after``.

    A transient error also carries the response's rate-limit headers (``rate_limit``) when it has any.
    """
    message = error_message(status_code, body, secret=secret)
    err = provider_error_for_status(provider, status_code, message, retry_after=retry_after_header(headers))
    if isinstance(err, TransientProviderError):
        err.rate_limit = RateLimitInfo.from_headers(headers)
    return err


def describe(err: BaseException) -> str:
    """``Class: message`` on one line, the message taken from the cause chain when ``err`` has none."""
    cause: BaseException | None = err
    while cause is not None and not str(cause):
        cause = cause.__cause__ or cause.__context__
    detail = " ".join(str(cause).split()) if cause is not None else ""
    return truncate(f"{type(err).__name__}: {detail}") if detail else type(err).__name__


def timeout_error(
    provider: str, url: str, cause: BaseException | None, timeout: float | TimeoutLike | None
) -> TransientProviderError:
    """A timed-out request; names the phase (connect, read, ...) and its limit when known."""
    phase = _TIMEOUT_PHASES.get(type(cause).__name__, "read")
    seconds = timeout if timeout is None or isinstance(timeout, int | float) else getattr(timeout, phase)
    after = f" after {seconds:g} s" if seconds is not None else ""
    return TransientProviderError(provider, f"request timed out{after} ({phase} timeout, {safe_url(url)})")


def connection_error(provider: str, url: str, cause: BaseException | None) -> TransientProviderError:
    """A connection that could not be opened, or broke before a response came back."""
    detail = describe(cause) if cause is not None else "connection error"
    if type(cause).__name__ == "ConnectError":
        return TransientProviderError(provider, f"cannot connect to {safe_url(url)}: {detail}")
    return TransientProviderError(provider, f"connection to {safe_url(url)} failed: {detail}")


def malformed_response_error(
    provider: str,
    url: str,
    err: BaseException,
    *,
    status_code: int | None = None,
    body: str | None = None,
    secret: str | None = None,
) -> PermanentProviderError:
    """A 2xx response that is not the JSON the API promises (retrying the same server will not help)."""
    snippet = f"; body: {truncate(redact(body, secret), 200)!r}" if body is not None else ""
    detail = redact(describe(err), secret)
    return PermanentProviderError(
        provider, f"malformed response from {safe_url(url)}: {detail}{snippet}", status_code=status_code
    )
