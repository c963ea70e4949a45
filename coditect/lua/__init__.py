"""coditect's Lua scripts, each prefixed with the key names of ``coditect.keys``.

A script reads ``JOB .. id`` rather than ``'arq:job:' .. id``: the preamble built here defines every
name from the one place that spells it, so Python and Lua cannot drift apart.
"""

from __future__ import annotations

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
    "DONE_LIST_MIN_TTL_MS": keys.DONE_LIST_MIN_TTL_MS,
    "DONE_LIST_FOREVER_TTL_MS": keys.DONE_LIST_FOREVER_TTL_MS,
    "LIMIT_GRACE_MS": keys.LIMIT_GRACE_MS,
}


def _lua_literal(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_PREAMBLE = "".join(f"local {name} = {_lua_literal(value)}\n" for name, value in _NAMES.items())


@cache
def script(name: str) -> str:
    """The source of ``<name>.lua`` with the key-name preamble."""
    return _PREAMBLE + files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
