"""Batch files: what loads, and for every bad input an error that names the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coditect.client.batchfile import load_batch_file
from coditect.errors import TaskInputError
from coditect.models import MAX_PROMPT_CHARS


def write_json(tmp_path: Path, data: Any, name: str = "batch.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(TaskInputError) as caught:
        load_batch_file(path)
    message = str(caught.value)
    assert str(path) in message
    return message


def test_valid_json_batch(tmp_path: Path) -> None:
    path = write_json(
        tmp_path,
        {
            "name": "docs-refresh",
            "tasks": [
                {"id": "t1", "title": "Summarise the ADR", "description": "short", "agent": "writer"},
                {"id": "t2", "title": "Review t1", "agent": "reviewer", "depends_on": ["t1"]},
            ],
        },
    )
    spec = load_batch_file(path)
    assert spec.name == "docs-refresh"
    assert [task.id for task in spec.tasks] == ["t1", "t2"]
    assert spec.tasks[0].agent == "writer"
    assert spec.tasks[0].description == "short"
    assert spec.tasks[1].depends_on == ["t1"]


def test_bare_list_takes_the_file_stem_as_name_and_generates_ids(tmp_path: Path) -> None:
    path = write_json(tmp_path, [{"title": "one"}, {"title": "two", "agent": "coder"}], name="nightly.json")
    spec = load_batch_file(path)
    assert spec.name == "nightly"
    assert [task.title for task in spec.tasks] == ["one", "two"]
    assert [task.agent for task in spec.tasks] == ["default", "coder"]
    assert spec.tasks[0].id != spec.tasks[1].id
    assert all(task.id.startswith("task-") for task in spec.tasks)


def test_toml_batch(tmp_path: Path) -> None:
    path = tmp_path / "batch.toml"
    path.write_text(
        'name = "from-toml"\n\n[[tasks]]\nid = "a"\ntitle = "First"\n\n'
        '[[tasks]]\nid = "b"\ntitle = "Second"\nagent = "reviewer"\ndepends_on = ["a"]\n',
        encoding="utf-8",
    )
    spec = load_batch_file(path)
    assert spec.name == "from-toml"
    assert [(task.id, task.agent, task.depends_on) for task in spec.tasks] == [
        ("a", "default", []),
        ("b", "reviewer", ["a"]),
    ]


def test_title_whitespace_is_stripped(tmp_path: Path) -> None:
    spec = load_batch_file(write_json(tmp_path, [{"id": "a", "title": "  padded  "}]))
    assert spec.tasks[0].title == "padded"


def test_missing_file(tmp_path: Path) -> None:
    assert "cannot read file" in load_error(tmp_path / "absent.json")


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "batch.json"
    path.write_text('{"tasks": [', encoding="utf-8")
    assert "not valid JSON" in load_error(path)


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "batch.toml"
    path.write_text("[[tasks]\ntitle = ", encoding="utf-8")
    assert "not valid TOML" in load_error(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "batch.json"
    path.write_bytes(b"\xff\xfe{\x00}\x00")
    assert "not UTF-8" in load_error(path)


@pytest.mark.parametrize("data", ["just a string", 42, None, True])
def test_wrong_top_level_type(tmp_path: Path, data: Any) -> None:
    assert "expected an object with 'tasks', or a list of tasks" in load_error(write_json(tmp_path, data))


@pytest.mark.parametrize(
    ("data", "field", "expected"),
    [
        pytest.param({"tasks": []}, "tasks", "no tasks", id="no-tasks"),
        pytest.param([], "tasks", "no tasks", id="empty-list"),
        pytest.param({"name": "x"}, "tasks", "a list of tasks", id="tasks-missing"),
        pytest.param({"tasks": {"id": "a"}}, "tasks", "a list of tasks", id="tasks-not-a-list"),
        pytest.param(
            {"name": 7, "tasks": [{"title": "a"}]}, "name", "must be a string", id="name-not-a-string"
        ),
        pytest.param(
            {"tasks": [{"title": "a"}], "extra": 1}, "extra", "unknown top-level key", id="unknown-key"
        ),
    ],
)
def test_bad_batch_shape(tmp_path: Path, data: Any, field: str, expected: str) -> None:
    message = load_error(write_json(tmp_path, data))
    assert f": {field}: " in message
    assert expected in message


@pytest.mark.parametrize(
    ("second_task", "field", "expected"),
    [
        pytest.param({"id": "b", "title": 3}, "tasks[1].title", "valid string", id="title-number"),
        pytest.param({"id": "b"}, "tasks[1].title", "required", id="title-missing"),
        pytest.param({"id": "b", "title": ""}, "tasks[1].title", "at least 1 character", id="title-empty"),
        pytest.param(
            {"id": "b", "title": " \t\n "}, "tasks[1].title", "at least 1 character", id="title-blank"
        ),
        pytest.param({"id": "b", "title": "x" * 501}, "tasks[1].title", "at most 500", id="title-too-long"),
        pytest.param(
            {"id": "b", "title": "t", "description": "x" * 1_000_000},
            "tasks[1].description",
            f"at most {MAX_PROMPT_CHARS}",
            id="description-1MB",
        ),
        pytest.param({"id": "b c", "title": "t"}, "tasks[1].id", "pattern", id="id-space"),
        pytest.param({"id": "../etc", "title": "t"}, "tasks[1].id", "pattern", id="id-slash"),
        pytest.param({"id": "", "title": "t"}, "tasks[1].id", "pattern", id="id-empty"),
        pytest.param({"id": 5, "title": "t"}, "tasks[1].id", "valid string", id="id-number"),
        pytest.param({"id": "b", "title": "t", "agent": "a/b"}, "tasks[1].agent", "pattern", id="agent-path"),
        pytest.param(
            {"id": "b", "title": "t", "depends_on": "a"}, "tasks[1].depends_on", "list", id="deps-str"
        ),
        pytest.param(
            {"id": "b", "title": "t", "timeout_s": -1}, "tasks[1].timeout_s", "greater than 0", id="tmo"
        ),
        pytest.param(
            {"id": "b", "title": "t", "colour": "red"}, "tasks[1].colour", "Extra inputs", id="extra"
        ),
        pytest.param("not an object", "tasks[1]", "valid dictionary", id="task-not-object"),
    ],
)
def test_bad_task_names_file_and_field(tmp_path: Path, second_task: Any, field: str, expected: str) -> None:
    path = write_json(tmp_path, {"tasks": [{"id": "a", "title": "fine"}, second_task]})
    message = load_error(path)
    assert message.startswith(f"{path}: {field}: ")
    assert expected in message


def test_error_in_a_toml_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "batch.toml"
    path.write_text('[[tasks]]\ntitle = "ok"\n\n[[tasks]]\ntitle = 12\n', encoding="utf-8")
    assert f"{path}: tasks[1].title: " in load_error(path)
