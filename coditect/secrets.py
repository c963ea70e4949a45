"""Masking secrets in text: what looks like a secret, and any run of 8+ characters of a known one.

Two layers, both replacing with ``***``:

- Patterns (``redact_secrets``) catch what looks like a secret wherever it comes from:
  Anthropic/OpenAI-style keys, bearer tokens, ``x-api-key``/``api_key`` values, and passwords in
  URLs (``scheme://user:password@``, ``?password=``/``&password=``, sentinel URLs).
- A ``Redactor`` also knows the secret values themselves (the API keys in ``Settings`` and the
  Redis URL's passwords) and masks every run of ``MIN_RUN_CHARS`` or more characters of any of
  them: a provider that echoes the first 40 or the last 50 characters of the key it refused
  leaves nothing of it behind. The runs of 8 or more are exactly the union of the occurrences of
  the secrets' 8-character substrings, which is what ``Redactor.redact_known`` looks for.

The process keeps a registry of the secrets in use (``register_secrets``), filled by whoever holds
``Settings`` (the executor, the CLI): log records are made anywhere, and the log filter masks
them with ``registered_redactor()``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from coditect.models import ExecutionResult
    from coditect.settings import Settings

__all__ = [
    "MASK",
    "MIN_RUN_CHARS",
    "QUERY_PASSWORD",
    "Redactor",
    "redact_result",
    "redact_secrets",
    "register_secrets",
    "registered_redactor",
    "settings_secrets",
    "url_passwords",
]

MASK = "***"
MIN_RUN_CHARS = 8

# redis-py also takes the password as a query parameter: redis://host/0?password=...&db=1. A value
# masked already is skipped: in "...?password=***: error" the ':' is the message's, not the password's.
QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)(?!\*\*\*)([^&#\s'\"]+)")
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
    # The password of redis://user:password@host, rediss:// and redis+sentinel://, up to the last
    # '@' of the word: Redis passwords often hold an unencoded '/' or '@'.
    (re.compile(r"(?i)(\brediss?(?:\+sentinel)?://[^:/@\s]*:)\S+@"), r"\1" + MASK + "@"),
    # Any other scheme://user:password@host (no '/' or '@' in the password there).
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s'\"]*:)[^/@\s'\"]+@"), r"\1" + MASK + "@"),
    # The query form redis-py also accepts: redis://host/0?password=... or ...&password=...
    (QUERY_PASSWORD, r"\1" + MASK),
)


# Text that none of the patterns above can match, as most log lines are, skips them: each needs
# "sk-", "://" or one of these words (matched with the same case rules), and looking for them costs a
# tenth of the eight substitutions.
_SECRET_WORDS = re.compile(r"(?i)[abp](?:earer|pi|assword=)")


def redact_secrets(text: str) -> str:
    """``text`` with every API key, bearer token and URL password replaced by ``***`` (patterns only)."""
    if "sk-" not in text and "://" not in text and _SECRET_WORDS.search(text) is None:
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class Redactor:
    """Masks the patterns of ``redact_secrets`` and every run of 8+ characters of known secrets.

    Secrets shorter than ``MIN_RUN_CHARS`` are left to the patterns: masking every occurrence of a
    short password such as ``redis`` would garble every log line that names Redis.
    """

    __slots__ = ("_candidates", "_grams")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        n = MIN_RUN_CHARS
        values = {secret for secret in secrets if secret and len(secret) >= n}
        self._grams = frozenset(v[i : i + n] for v in values for i in range(len(v) - n + 1))
        # Only stretches of 8+ characters that all occur in some secret can hold a run: look there.
        alphabet = "".join(sorted({char for gram in self._grams for char in gram}))
        self._candidates = re.compile(f"[{re.escape(alphabet)}]{{{n},}}") if alphabet else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        """A redactor for the API keys in ``settings`` and the passwords in its Redis URL."""
        return cls(settings_secrets(settings))

    def redact(self, text: str) -> str:
        """Secret-shaped patterns first, then any run of a known secret that is left."""
        return self.redact_known(redact_secrets(text))

    def redact_known(self, text: str) -> str:
        """``text`` with every run of ``MIN_RUN_CHARS`` or more characters of a known secret masked."""
        if self._candidates is None:
            return text
        grams, n = self._grams, MIN_RUN_CHARS
        spans: list[list[int]] = []
        for match in self._candidates.finditer(text):
            for start in range(match.start(), match.end() - n + 1):
                if text[start : start + n] in grams:
                    if spans and start <= spans[-1][1]:
                        spans[-1][1] = start + n
                    else:
                        spans.append([start, start + n])
        if not spans:
            return text
        pieces: list[str] = []
        done = 0
        for start, end in spans:
            pieces += (text[done:start], MASK)
            done = end
        pieces.append(text[done:])
        return "".join(pieces)


def url_passwords(url: str) -> list[str]:
    """The passwords a Redis URL carries (user info, ``password=`` query parameters); never raises."""
    found = [value for _, value in QUERY_PASSWORD.findall(url)]
    _, sep, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    lenient = userinfo.partition(":")[2] if sep and at else ""
    # As written up to the last '@' (a password may hold '/' or '@'), unless that reaches a query.
    if lenient and "?" not in lenient and "#" not in lenient:
        found.append(lenient)
    with contextlib.suppress(ValueError):  # not a valid URL
        password = urlsplit(url).password
        if password:
            found.append(password)
    return list(dict.fromkeys([*found, *(unquote(value) for value in found)]))


def settings_secrets(settings: Settings) -> list[str]:
    """The secret values ``settings`` holds: the API keys, the dashboard's token and the Redis URL's
    passwords."""
    keys = (settings.anthropic_api_key, settings.openai_api_key, settings.dashboard_token)
    return [key.get_secret_value() for key in keys if key is not None] + url_passwords(settings.redis_url)


def redact_result(result: ExecutionResult, redactor: Redactor) -> ExecutionResult:
    """``result`` with known secrets masked in its output, and secrets of any kind in its error.

    The output is the agent's answer: only known secrets are masked there, so that a coder agent's
    ``api_key = "..."`` example comes back as written.
    """
    output = redactor.redact_known(result.output)
    error = redactor.redact(result.error) if result.error is not None else None
    if output == result.output and error == result.error:
        return result
    return result.model_copy(update={"output": output, "error": error})


class _Registry:
    """The secrets this process uses; a new ``Redactor`` is swapped in whenever one is added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self.redactor = Redactor()

    def add(self, values: Iterable[str | None]) -> None:
        new = {value for value in values if value} - self._secrets
        if not new:
            return
        with self._lock:
            self._secrets |= new
            self.redactor = Redactor(self._secrets)


_REGISTRY = _Registry()


def register_secrets(values: Iterable[str | None]) -> None:
    """Add secret values (e.g. ``settings_secrets(settings)``) to those the log filter masks."""
    _REGISTRY.add(values)


def registered_redactor() -> Redactor:
    """A ``Redactor`` for every secret registered so far in this process."""
    return _REGISTRY.redactor
