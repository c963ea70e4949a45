"""coditect's Lua scripts, each prefixed with the key names of ``coditect.keys``.

A script reads ``JOB .. id`` rather than ``'arq:job:' .. id``: the preamble built here defines every
name from the one place that spells it, so Python and Lua cannot drift apart. A line
``-- #include <name>`` is replaced by ``<name>.lua`` (the batch library, shared by the scripts that
change a batch).
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from coditect import keys

__all__ = ["script"]

_NAMES: dict[str, str | int] = {
    "JOB": keys.JOB_PREFIX,
    "RESULT": keys.RESULT_PREFIX,
    "RETRY": keys.RETRY_PREFIX,
    "IN_PROGRESS": keys.IN_PROGRESS_PREFIX,
    "ABORT": keys.ABORT_SET,
    "RETRY_TTL_S": keys.RETRY_COUNTER_TTL_S,
    "JOB_NAME": keys.JOB_NAME,
    "JOB_ID_PREFIX": keys.JOB_ID_PREFIX,
    # A Lua pattern: the prefix with its magic characters escaped, then (batch id):(task id).
    "JOB_ID_PATTERN": "^" + re.sub(r"([\^$()%.\[\]*+\-?])", r"%\1", keys.JOB_ID_PREFIX) + "([^:]+):(.+)$",
    "BATCH": keys.BATCH_KEY_PREFIX,
    "BATCHES": keys.BATCHES_KEY,
    "LAST_CLAIM": keys.CLAIM_KEY_PREFIX,
    "EVENTS": keys.EVENTS_KEY_PREFIX,
    "EVENTS_ALL": keys.EVENTS_KEY,
    "END_SUFFIX": keys.BATCH_END_SUFFIX,
    "WORKER_CHANNEL": keys.WORKER_CHANNEL_PREFIX,
    "RUNNING_TTL_MS": keys.BATCH_RUNNING_TTL_MS,
    "LIMIT_GRACE_MS": keys.LIMIT_GRACE_MS,
}
_INCLUDE = re.compile(r"^-- #include (\w+)$", re.MULTILINE)


def _lua_literal(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_PREAMBLE = "".join(f"local {name} = {_lua_literal(value)}\n" for name, value in _NAMES.items())


def _source(name: str) -> str:
    text = files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda match: _source(match.group(1)), text)


@cache
def script(name: str) -> str:
    """The source of ``<name>.lua`` with the key-name preamble and its includes."""
    return _PREAMBLE + _source(name)
