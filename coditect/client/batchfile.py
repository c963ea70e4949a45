"""Batch files: JSON (or TOML) to a validated list of tasks, with errors that name the file and field."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from coditect.errors import TaskInputError
from coditect.models import AgentTask

__all__ = ["BatchSpec", "load_batch_file", "parse_batch"]

MAX_BATCH_FILE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """A batch as read from a file: its name and its tasks, in file order."""

    name: str
    tasks: list[AgentTask]


def load_batch_file(path: Path) -> BatchSpec:
    """Read and validate a batch file. Raises ``TaskInputError`` naming the file and the field."""
    source = str(path)
    try:
        if path.stat().st_size > MAX_BATCH_FILE_BYTES:
            raise TaskInputError(f"file is larger than {MAX_BATCH_FILE_BYTES} bytes", source=source)
        raw = path.read_bytes()
    except OSError as err:
        raise TaskInputError(f"cannot read file: {err.strerror}", source=source) from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TaskInputError(f"not UTF-8 text (byte {err.start})", source=source) from err
    if path.suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise TaskInputError(f"not valid TOML: {err}", source=source) from err
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise TaskInputError(
                f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}", source=source
            ) from err
    return parse_batch(data, source=source, default_name=path.stem)


def parse_batch(data: Any, *, source: str = "batch", default_name: str = "") -> BatchSpec:
    """Validate parsed batch data: ``{"name": ..., "tasks": [...]}`` or a bare list of tasks."""
    entries: Any
    if isinstance(data, list):
        name, entries = default_name, data
    elif isinstance(data, dict):
        unknown = sorted(set(data) - {"name", "tasks"})
        if unknown:
            raise TaskInputError(
                "unknown top-level key; expected 'name' and 'tasks'", source=source, field=unknown[0]
            )
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
    return BatchSpec(name=name, tasks=tasks)
