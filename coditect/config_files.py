"""Reading a JSON (or, by its ``.toml`` suffix, TOML) settings file into a pydantic model.

Every problem is one line that names the file and the field:
``limits.json: limits[2].requests_per_minute: Input should be greater than 0``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from coditect.errors import ConfigurationError

__all__ = ["field_path", "load_config_file"]

M = TypeVar("M", bound=BaseModel)


def load_config_file(path: Path, model: type[M]) -> M:
    """``path`` parsed and validated as ``model``; raises ``ConfigurationError`` naming file and field."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigurationError(f"{path}: cannot read: {err.strerror}") from err
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        data: Any = tomllib.loads(raw.decode()) if kind == "TOML" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigurationError(f"{path}: not valid {kind}: {err}") from err
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = field_path(first["loc"])
        raise ConfigurationError(f"{path}: {where + ': ' if where else ''}{first['msg']}") from err


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("limits", 2, "model")`` as ``limits[2].model``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text
