"""Batch files: what loads, and for every bad input an error that names the file and the field."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from coditect.client import batchfile
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


# -- hostile files: refused in one short line, quickly, whatever they hold -------------------------

DEEP = 100_000


def quick_error(path: Path) -> TaskInputError:
    """The error loading ``path``; it must come within a second and fit on one short line."""
    started = time.monotonic()
    with pytest.raises(TaskInputError) as caught:
        load_batch_file(path)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert len(message) < len(str(path)) + 200, message  # no payload echoed back
    return caught.value


TOO_MANY_DIGITS = '{"tasks": [{"title": "a", "timeout_s": ' + "1" * 5000 + "}]}"
SURROGATE_NAME = '{"name": "\\ud800", "tasks": [{"title": "a"}]}'
# (id, file name, content, the error's field, a phrase of its message)
HOSTILE = [
    ("int-5000-digits", "b.json", TOO_MANY_DIGITS, "", "a number of 5000 digits (at most 4300)"),
    ("json-array-deep", "b.json", "[" * DEEP + "]" * DEEP, "", "nested too deeply"),
    ("json-object-deep", "b.json", '{"a": ' * DEEP + "1" + "}" * DEEP, "", "nested too deeply"),
    ("toml-array-deep", "b.toml", "a = " + "[" * DEEP + "]" * DEEP, "", "nested too deeply"),
    ("toml-table-deep", "b.toml", "a = " + "{b = " * DEEP + "1" + "}" * DEEP, "", "nested too deeply"),
    ("surrogate-name", "b.json", SURROGATE_NAME, "name", "lone surrogate"),
    (
        "surrogate-title",
        "b.json",
        '[{"title": "ok"}, {"title": "x \\udfff"}]',
        "tasks[1].title",
        "lone surrogate",
    ),
    (
        "surrogate-key",
        "b.json",
        '[{"title": "a", "metadata": {"\\udc00": 1}}]',
        "tasks[0].metadata",
        "surrogate",
    ),
    ("infinity", "b.json", '[{"title": "a", "timeout_s": Infinity}]', "", "Infinity is not a JSON number"),
    ("minus-infinity", "b.json", '[{"title": "a", "timeout_s": -Infinity}]', "", "-Infinity is not a JSON"),
    ("nan", "b.json", '[{"title": "a", "metadata": {"x": NaN}}]', "", "NaN is not a JSON number"),
    ("1e999", "b.json", '[{"title": "a", "metadata": {"x": 1e999}}]', "", "too large for a float"),
    ("timeout-str", "b.json", '[{"title": "a", "timeout_s": "10"}]', "tasks[0].timeout_s", "valid number"),
    ("timeout-bool", "b.json", '[{"title": "a", "timeout_s": true}]', "tasks[0].timeout_s", "valid number"),
    (
        "toml-timeout-str",
        "b.toml",
        '[[tasks]]\ntitle = "a"\ntimeout_s = "10"',
        "tasks[0].timeout_s",
        "number",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "field", "expected"), [pytest.param(*case[1:], id=case[0]) for case in HOSTILE]
)
def test_hostile_content_is_refused_in_one_line(
    tmp_path: Path, name: str, content: str, field: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    err = quick_error(path)
    assert err.field == field
    assert expected in err.message


def test_numbers_that_json_allows_still_load(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(
        '[{"title": "a", "timeout_s": 10, "metadata": {"big": ' + "9" * 4300 + ', "f": 1.5e300, "neg": -2}},'
        ' {"title": "b", "timeout_s": 2.5}]',
        encoding="utf-8",
    )
    first, second = load_batch_file(path).tasks
    assert (first.timeout_s, second.timeout_s) == (10.0, 2.5)
    assert first.metadata == {"big": int("9" * 4300), "f": 1.5e300, "neg": -2}


def test_escaped_surrogate_pairs_are_text(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text('{"name": "snake \\ud83d\\udc0d", "tasks": [{"title": "\\u00e9t\\u00e9"}]}')
    spec = load_batch_file(path)
    assert (spec.name, spec.tasks[0].title) == ("snake \N{SNAKE}", "\N{LATIN SMALL LETTER E WITH ACUTE}t\xe9")


def test_a_file_name_that_is_not_text_gives_a_batch_name_that_is(tmp_path: Path) -> None:
    path = Path(os.fsdecode(bytes(tmp_path) + b"/b\xff.json"))
    path.write_text('[{"title": "a"}]', encoding="utf-8")
    assert load_batch_file(path).name == "b?"


@pytest.mark.timeout(10)  # before the fix these blocked for ever, or read without end
@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        pytest.param("fifo", "not a regular file (a FIFO)", id="fifo"),
        pytest.param("dev-zero", "not a regular file (a character device)", id="symlink-to-dev-zero"),
        pytest.param("directory", "not a regular file (a directory)", id="directory"),
    ],
)
def test_what_is_not_a_regular_file_is_refused_unread(tmp_path: Path, kind: str, expected: str) -> None:
    path = tmp_path / "batch.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    assert quick_error(path).message == expected


def test_a_file_over_the_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batchfile, "MAX_BATCH_FILE_BYTES", 64)
    path = write_json(tmp_path, [{"title": "x" * 100}])
    assert quick_error(path).message == "file is larger than 64 bytes"
