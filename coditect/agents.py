"""The agent registry: agent names to how they run (mode, provider, model, prompt, endpoint, script)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from coditect.errors import ConfigurationError
from coditect.models import AgentConfig
from coditect.settings import Settings

__all__ = ["BUILTIN_AGENTS", "AgentRegistry"]

BUILTIN_AGENTS = (
    AgentConfig(name="default", system_prompt="You are a capable assistant. Answer concisely."),
    AgentConfig(name="writer", system_prompt="You are a technical writer. Write clear, short prose."),
    AgentConfig(name="reviewer", system_prompt="You are a careful reviewer. List concrete problems first."),
    AgentConfig(
        name="researcher", system_prompt="You are a researcher. Summarise what is known and cite it."
    ),
    AgentConfig(name="coder", system_prompt="You are a senior Python engineer. Answer with working code."),
)


class AgentRegistry:
    """Agents by name: the built-in ones, overridden or extended by ``CODITECT_AGENTS_FILE``."""

    def __init__(self, agents: Iterable[AgentConfig] = BUILTIN_AGENTS) -> None:
        self._agents = {agent.name: agent for agent in agents}

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentRegistry:
        agents = {agent.name: agent for agent in BUILTIN_AGENTS}
        if settings.agents_file is not None:
            agents.update((agent.name, agent) for agent in load_agents_file(settings.agents_file))
        return cls(agents.values())

    def get(self, name: str) -> AgentConfig:
        try:
            return self._agents[name]
        except KeyError:
            known = ", ".join(sorted(self._agents))
            raise ConfigurationError(f"unknown agent {name!r}; known agents: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __iter__(self) -> Iterator[AgentConfig]:
        return iter(self._agents.values())

    @property
    def names(self) -> list[str]:
        return sorted(self._agents)


def load_agents_file(path: Path) -> list[AgentConfig]:
    """Read agents from JSON or TOML: ``{"agents": [{"name": ..., ...}, ...]}``."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigurationError(f"{path}: cannot read agents file: {err.strerror}") from err
    try:
        data: Any = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigurationError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {err}") from err
    entries = data.get("agents") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigurationError(f"{path}: expected an object with an 'agents' list")
    agents = []
    for index, entry in enumerate(entries):
        try:
            agents.append(AgentConfig.model_validate(entry))
        except ValidationError as err:
            first = err.errors()[0]
            field = "".join(f".{part}" for part in first["loc"])
            raise ConfigurationError(f"{path}: agents[{index}]{field}: {first['msg']}") from err
    return agents
