"""Redis errors in one short line: what Redis refused and why, never the command's arguments.

redis-py's exceptions carry the server's message and, for a command in a pipeline, the command with
every argument (``Command # 1 (EVALSHA ... <a batch's tasks>) of pipeline caused error: ...``): that
can be megabytes of somebody's prompts in an error line. ``refusal`` names the cause instead (out of
memory, the ACL and the command it refused, a read-only replica, a server still loading), and
``short_error`` keeps the server's own words for anything else, cut to one short line.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import re
from collections.abc import Iterator

from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from coditect.errors import RedisRefusedError

__all__ = ["MAX_ERROR_CHARS", "RefusalLog", "refusal", "refusals", "short_error"]

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 200
_PIPELINE_MARK = " of pipeline caused error: "
_REFUSED_COMMAND = re.compile(r"permissions to run the '([^']{1,64})' command")
_REFUSED_ACCESS = re.compile(r"access (?:an? |one of the |at least one of the )?(key|channel)", re.IGNORECASE)


def short_error(err: BaseException) -> str:
    """The error's message without a pipeline's command and arguments: its first line, at most
    ``MAX_ERROR_CHARS`` characters."""
    text = str(err) or type(err).__name__
    if text.startswith("Command # ") and _PIPELINE_MARK in text:
        text = text.rpartition(_PIPELINE_MARK)[2]
        if text.startswith("("):  # redis.asyncio quotes the error's args as a tuple
            with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
                quoted = ast.literal_eval(text)
                text = str(quoted[0]) if isinstance(quoted, tuple) and quoted else text
    line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def refusal(err: RedisError, url: str = "", *, doing: str = "") -> RedisRefusedError | None:
    """A ``RedisRefusedError`` naming why Redis (at ``url``, its password masked) refused, or None when
    ``err`` is no refusal (a dropped connection, a timeout). ``doing`` ends the line: what did not happen."""
    where = f"Redis at {url}" if url else "Redis"
    tail = f": {doing}" if doing else ""
    if isinstance(err, OutOfMemoryError):
        at = f" at {url}" if url else ""
        return RedisRefusedError(
            f"Redis is out of memory (maxmemory reached{at}, and maxmemory-policy refuses writes){tail}",
            cause="oom",
        )
    if isinstance(err, NoPermissionError):
        message = str(err)
        named = _REFUSED_COMMAND.search(message)
        if named is not None:
            command = named.group(1).upper()
            return RedisRefusedError(
                f"{where} refused {command} (its ACL does not let this user run it){tail}",
                cause="acl",
                command=command,
            )
        access = _REFUSED_ACCESS.search(message)
        what = f"a {access.group(1)}" if access else "a command"
        return RedisRefusedError(
            f"{where} refused access to {what} (its ACL must let this user use coditect's keys and "
            f"channels: ~coditect:* ~arq:* &coditect:*){tail}",
            cause="acl",
        )
    if isinstance(err, ReadOnlyError):
        return RedisRefusedError(
            f"{where} is a read-only replica: point the URL at the master (or at its sentinels){tail}",
            cause="readonly",
        )
    if isinstance(err, BusyLoadingError):
        return RedisRefusedError(
            f"{where} is still loading its data; try again once it has{tail}", cause="loading"
        )
    if isinstance(err, AuthenticationError):
        return RedisRefusedError(
            f"{where} refused the credentials: check the user name and password in the URL{tail}", cause="acl"
        )
    if isinstance(err, ResponseError):
        return RedisRefusedError(f"{where} refused a command: {short_error(err)}{tail}", cause="error")
    return None


@contextlib.contextmanager
def refusals(url: str = "", *, doing: str = "") -> Iterator[None]:
    """Turn Redis's refusals raised inside the block into ``RedisRefusedError`` (connection errors pass)."""
    try:
        yield
    except RedisError as err:
        refused = refusal(err, url, doing=doing)
        if refused is None:
            raise
        raise refused from err


class RefusalLog:
    """Says what Redis refused once, at ERROR, and each repeat at DEBUG.

    A worker keeps retrying what Redis refused (an administrator may fix the ACL while it runs), and
    one line saying which command the ACL refuses beats a warning every two seconds.
    """

    def __init__(self) -> None:
        self._said: set[str] = set()

    def report(self, err: BaseException, consequence: str) -> bool:
        """Log ``err`` if it is a refusal (``consequence``: what does not happen meanwhile); True if so."""
        refused = refusal(err, doing=consequence) if isinstance(err, RedisError) else None
        if refused is None:
            return False
        line = str(refused)
        if line in self._said:
            logger.debug("%s", line)
        else:
            self._said.add(line)
            logger.error("%s", line)
        return True
