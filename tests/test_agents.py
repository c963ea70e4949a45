"""The agent registry: built-in agents, extended or overridden by CODITECT_AGENTS_FILE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coditect.agents import BUILTIN_AGENTS, AgentRegistry
from coditect.errors import ConfigurationError
from coditect.models import AgentConfig
from coditect.settings import Settings

BUILTIN_NAMES = ["coder", "default", "researcher", "reviewer", "writer"]

AGENTS_JSON = {
    "agents": [
        {"name": "writer", "provider": "openai", "model": "local-7b", "system_prompt": "Be terse."},
        {"name": "remote", "mode": "api", "endpoint": "http://127.0.0.1:9000/run"},
    ]
}

AGENTS_TOML = """
[[agents]]
name = "writer"
provider = "openai"
model = "local-7b"
system_prompt = "Be terse."

[[agents]]
name = "remote"
mode = "api"
endpoint = "http://127.0.0.1:9000/run"
"""


def registry_from_file(monkeypatch: pytest.MonkeyPatch, path: Path) -> AgentRegistry:
    monkeypatch.setenv("CODITECT_AGENTS_FILE", str(path))
    return AgentRegistry.from_settings(Settings(_env_file=None))


def test_builtin_agents_are_present() -> None:
    registry = AgentRegistry()

    assert registry.names == BUILTIN_NAMES
    assert all(name in registry for name in BUILTIN_NAMES)
    assert [agent.name for agent in registry] == [agent.name for agent in BUILTIN_AGENTS]
    assert all(agent.mode == "llm" and agent.system_prompt for agent in registry)


def test_from_settings_without_a_file_has_only_the_builtins(settings: Settings) -> None:
    assert AgentRegistry.from_settings(settings).names == BUILTIN_NAMES


def test_get_returns_the_config() -> None:
    assert AgentRegistry().get("writer") is next(a for a in BUILTIN_AGENTS if a.name == "writer")


def test_get_unknown_agent_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as exc_info:
        AgentRegistry().get("poet")

    message = str(exc_info.value)
    assert "'poet'" in message
    assert all(name in message for name in BUILTIN_NAMES)


def test_contains_rejects_unknown_and_non_string_names() -> None:
    registry = AgentRegistry()

    assert "poet" not in registry
    assert 3 not in registry


def test_custom_registry_holds_only_what_it_was_given() -> None:
    registry = AgentRegistry([AgentConfig(name="solo")])

    assert registry.names == ["solo"]
    with pytest.raises(ConfigurationError, match="known agents: solo"):
        registry.get("default")


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_agents_file_extends_and_overrides_builtins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"agents{suffix}"
    path.write_text(json.dumps(AGENTS_JSON) if suffix == ".json" else AGENTS_TOML, encoding="utf-8")

    registry = registry_from_file(monkeypatch, path)

    assert registry.names == sorted([*BUILTIN_NAMES, "remote"])
    writer = registry.get("writer")
    assert writer.provider == "openai"
    assert writer.model == "local-7b"
    assert writer.system_prompt == "Be terse."
    remote = registry.get("remote")
    assert remote.mode == "api"
    assert str(remote.endpoint) == "http://127.0.0.1:9000/run"
    # Built-ins the file does not mention are untouched.
    assert registry.get("reviewer") == next(a for a in BUILTIN_AGENTS if a.name == "reviewer")


def test_a_later_entry_with_the_same_name_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps({"agents": [{"name": "x", "model": "m1"}, {"name": "x", "model": "m2"}]}))

    assert registry_from_file(monkeypatch, path).get("x").model == "m2"


def test_file_without_a_suffix_is_read_as_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "agents"
    path.write_text(json.dumps({"agents": [{"name": "plain"}]}))

    assert "plain" in registry_from_file(monkeypatch, path)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        pytest.param("agents.json", "{not json", "not valid json", id="bad-json"),
        pytest.param("agents.toml", "agents = [", "not valid toml", id="bad-toml"),
        pytest.param("agents.json", b"\xff\xfe\x00garbage", "not valid json", id="bad-bytes"),
        pytest.param(
            "agents.json", '{"agent": []}', "expected an object with an 'agents' list", id="no-list"
        ),
        pytest.param("agents.json", "[]", "expected an object with an 'agents' list", id="bare-list"),
        pytest.param("agents.json", '{"agents": {"name": "x"}}', "'agents' list", id="not-a-list"),
        pytest.param(
            "agents.json",
            '{"agents": [{"name": "ok"}, {"name": "b", "mode": "shell"}]}',
            "agents[1].mode",
            id="bad-mode",
        ),
        pytest.param("agents.json", '{"agents": [{"name": "../x"}]}', "agents[0].name", id="bad-name"),
        pytest.param(
            "agents.toml",
            '[[agents]]\nname = "a"\nscript = "../x.py"\n',
            "agents[0].script",
            id="toml-bad-script",
        ),
        pytest.param(
            "agents.json", '{"agents": [{"name": "a", "api_key": "k"}]}', "agents[0].api_key", id="extra"
        ),
        pytest.param("agents.json", '{"agents": [{"mode": "llm"}]}', "agents[0].name", id="missing-name"),
        pytest.param("agents.json", '{"agents": ["writer"]}', "agents[0]", id="entry-not-an-object"),
    ],
)
def test_bad_agents_file_raises_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, content: str | bytes, expected: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")

    with pytest.raises(ConfigurationError) as exc_info:
        registry_from_file(monkeypatch, path)

    message = str(exc_info.value)
    assert str(path) in message
    assert expected in message


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_agents_file_raises_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "agents.json"
    if kind == "directory":
        path.mkdir()

    with pytest.raises(ConfigurationError) as exc_info:
        registry_from_file(monkeypatch, path)

    assert str(exc_info.value).startswith(f"{path}: cannot read agents file")
