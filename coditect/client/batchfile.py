"""Batch files: JSON (or TOML) to a validated list of tasks, with errors that name the file and field.

Anything a file can hold is refused in one line, quickly: a path that is not a regular file (a FIFO
or ``/dev/zero`` would block or never end), more than ``MAX_BATCH_FILE_BYTES``, nesting deeper than
the parsers recurse, numbers that are not JSON numbers (``NaN``, ``Infinity``, ``1e999``, thousands
of digits) and strings that are not Unicode text (a lone surrogate escape such as ``"\\ud800"``).
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from coditect.errors import TaskInputError
from coditect.models import AgentTask, Budget

__all__ = ["BatchSpec", "load_batch_file", "parse_batch"]

MAX_BATCH_FILE_BYTES = 256 * 1024 * 1024
# Python refuses to convert longer digit strings (sys.get_int_max_str_digits()); no field needs more.
MAX_INT_DIGITS = 4300
# A FIFO opened without it blocks until a writer appears; on a regular file it changes nothing.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """A batch as read from a file: its name, its tasks in file order, and its budget if any."""

    name: str
    tasks: list[AgentTask]
    budget: Budget = field(default_factory=Budget)


def load_batch_file(path: Path) -> BatchSpec:
    """Read and validate a batch file. Raises ``TaskInputError`` naming the file and the field."""
    source = str(path)
    raw = _read_regular_file(path, source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TaskInputError(f"not UTF-8 text (byte {err.start})", source=source) from err
    data = _parse_toml(text, source) if path.suffix == ".toml" else _parse_json(text, source)
    # A file name may hold undecodable bytes (surrogate escapes); the batch name must be text.
    name = path.stem if _is_unicode(path.stem) else path.stem.encode("utf-8", "replace").decode()
    return parse_batch(data, source=source, default_name=name)


def _read_regular_file(path: Path, source: str) -> bytes:
    """At most ``MAX_BATCH_FILE_BYTES`` of a regular file; anything else is refused unread."""
    try:
        _refuse_unless_regular(path.stat().st_mode, source)  # a device is never even opened
        fd = os.open(path, _OPEN_FLAGS)
        with open(fd, "rb") as file:
            # Checked again on what was opened: the path may have been swapped since the stat.
            _refuse_unless_regular(os.fstat(file.fileno()).st_mode, source)
            raw = file.read(MAX_BATCH_FILE_BYTES + 1)
    except OSError as err:
        raise TaskInputError(f"cannot read file: {err.strerror or err}", source=source) from err
    if len(raw) > MAX_BATCH_FILE_BYTES:
        raise TaskInputError(f"file is larger than {MAX_BATCH_FILE_BYTES} bytes", source=source)
    return raw


def _refuse_unless_regular(mode: int, source: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
    raise TaskInputError(f"not a regular file ({kind})", source=source)


def _parse_toml(text: str, source: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise TaskInputError(f"not valid TOML: {err}", source=source) from err
    except RecursionError as err:  # tomllib recurses once per nested array or inline table
        raise TaskInputError("not valid TOML: nested too deeply", source=source) from err


def _parse_json(text: str, source: str) -> Any:
    try:
        data = json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except json.JSONDecodeError as err:
        raise TaskInputError(
            f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}", source=source
        ) from err
    except ValueError as err:  # raised by the number hooks below
        raise TaskInputError(f"not valid JSON: {err}", source=source) from err
    except RecursionError as err:
        raise TaskInputError("not valid JSON: nested too deeply", source=source) from err
    field = _lone_surrogate(data)
    if field is not None:
        raise TaskInputError(
            "not Unicode text: a lone surrogate escape (\\ud800-\\udfff)", source=source, field=field
        )
    return data


def _json_int(digits: str) -> int:
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError(f"a number of {len(digits)} digits (at most {MAX_INT_DIGITS})")
    return int(digits)


def _json_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("a number too large for a float")
    return value


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _lone_surrogate(data: Any) -> str | None:
    """The field of the first string holding a lone surrogate, as ``tasks[2].title``; else None.

    For a key, the field is the object that holds it: the key itself cannot be printed.
    """
    for path, text in _strings(data, "tasks" if isinstance(data, list) else ""):
        if not text.isascii() and not _is_unicode(text):
            return path or "(top level)"
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _strings(data: Any, root: str) -> Iterator[tuple[str, str]]:
    """Every string in parsed JSON, keys first, with its path; iterative, however deep the data."""
    stack: list[tuple[str, Any]] = [(root, data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            yield path, value
        elif isinstance(value, dict):
            for key in value:
                yield path, key
            stack.extend((f"{path}.{key}" if path else key, item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in reversed(list(enumerate(value))))


def parse_batch(data: Any, *, source: str = "batch", default_name: str = "") -> BatchSpec:
    """Validate parsed batch data: ``{"name": ..., "tasks": [...]}`` or a bare list of tasks."""
    entries: Any
    budget = Budget()
    if isinstance(data, list):
        name, entries = default_name, data
    elif isinstance(data, dict):
        unknown = sorted(set(data) - {"name", "tasks", "budget_usd", "budget_tokens"})
        if unknown:
            raise TaskInputError(
                "unknown top-level key; expected 'name', 'tasks', 'budget_usd' and 'budget_tokens'",
                source=source,
                field=unknown[0],
            )
        try:
            budget = Budget.model_validate(
                {key: data[key] for key in ("budget_usd", "budget_tokens") if key in data}
            )
        except ValidationError as err:
            first = err.errors()[0]
            raise TaskInputError(first["msg"], source=source, field=str(first["loc"][0])) from err
        name, entries = data.get("name", default_name), data.get("tasks")
        if not isinstance(name, str):
            raise TaskInputError("must be a string", source=source, field="name")
        if not isinstance(entries, list):
            raise TaskInputError("required: a list of tasks", source=source, field="tasks")
    else:
        raise TaskInputError("expected an object with 'tasks', or a list of tasks", source=source)
    if not entries:
        raise TaskInputError("the batch has no tasks", source=source, field="tasks")
    tasks = []
    for index, entry in enumerate(entries):
        try:
            tasks.append(AgentTask.model_validate(entry))
        except ValidationError as err:
            first = err.errors()[0]
            location = ".".join(str(part) for part in first["loc"])
            field = f"tasks[{index}]" + (f".{location}" if location else "")
            raise TaskInputError(first["msg"], source=source, field=field) from err
    return BatchSpec(name=name, tasks=tasks, budget=budget)
