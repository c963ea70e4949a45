"""Bad batch files against a real Redis: exit 2, one line naming the file and the field, Redis untouched.

The messages themselves are tested in ``tests/test_batchfile.py`` and, for ``coditect run`` without
Redis, in ``tests/test_cli.py::test_run_bad_input_exits_2_with_one_line``. What this adds: the
cases those leave out (unknown ``depends_on`` ids, ``../x`` as an agent, a 1 MB title, wrong types
of ``name`` and ``depends_on``), and proof that nothing reached Redis, for ``run`` and ``submit``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from coditect.cli.app import main

MB = 1_000_000

BAD_FILES = [
    pytest.param('{"tasks": [{"id": "a", "title": "x"}', "not valid JSON", "", id="not-json"),
    pytest.param(b'[{"id": "a", "title": "caf\xe9"}]', "not UTF-8", "", id="not-utf8"),
    pytest.param([{"id": "a", "title": 5}], "valid string", "tasks[0].title", id="title-not-a-string"),
    pytest.param({"name": 7, "tasks": [{"title": "x"}]}, "must be a string", "name", id="name-not-a-string"),
    pytest.param(
        [{"id": "a", "title": "x", "depends_on": "b"}], "list", "tasks[0].depends_on", id="deps-not-a-list"
    ),
    pytest.param([{"id": "a"}], "Field required", "tasks[0].title", id="title-missing"),
    pytest.param({"name": "no tasks"}, "a list of tasks", "tasks", id="tasks-missing"),
    pytest.param(
        [{"id": "a", "title": "x"}, {"id": "a", "title": "y"}],
        "more than once",
        "tasks[1].id",
        id="repeated-id",
    ),
    pytest.param(
        [{"id": "a", "title": "x"}, {"id": "b", "title": "y", "depends_on": ["a", "nope"]}],
        "depends on unknown task id 'nope'",
        "tasks[1].depends_on",
        id="unknown-dependency",
    ),
    pytest.param(
        [{"id": "a", "title": "x", "agent": "poet"}],
        "unknown agent 'poet'",
        "tasks[0].agent",
        id="unknown-agent",
    ),
    pytest.param(
        [{"id": "a", "title": "x", "agent": "../x"}], "pattern", "tasks[0].agent", id="agent-path-traversal"
    ),
    pytest.param([{"id": "a", "title": ""}], "at least 1 character", "tasks[0].title", id="empty-prompt"),
    pytest.param(
        [{"id": "a", "title": " \n\t "}], "at least 1 character", "tasks[0].title", id="blank-prompt"
    ),
    pytest.param(
        [{"id": "a", "title": "x" * MB}], "at most 500 characters", "tasks[0].title", id="1MB-title"
    ),
    pytest.param(
        [{"id": "a", "title": "x", "description": "d" * MB}],
        "at most 200000 characters",
        "tasks[0].description",
        id="1MB-description",
    ),
]


def write(path: Path, content: Any) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def redis_contents(url: str) -> tuple[int, int]:
    """(keys in the database, jobs in coditect's queue)."""
    with redis.Redis.from_url(url) as client:
        return int(client.dbsize()), int(client.zcard("coditect:queue"))


@pytest.mark.parametrize("command", ["run", "submit"])
@pytest.mark.parametrize(("content", "expected", "field"), BAD_FILES)
def test_bad_batch_file_exits_2_and_enqueues_nothing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    redis_url: str,
    command: str,
    content: Any,
    expected: str,
    field: str,
) -> None:
    path = write(tmp_path / "bad.json", content)
    assert main([command, str(path), "--redis-url", redis_url]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    where = f"coditect: error: {path}: {field}: " if field else f"coditect: error: {path}: "
    assert lines[0].startswith(where), lines[0]
    assert expected in lines[0]
    assert len(lines[0]) < 1000  # a 1 MB value is not echoed back
    assert redis_contents(redis_url) == (0, 0)


def test_a_good_file_does_reach_redis(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str
) -> None:
    # The control for the test above: the same check sees a batch that was enqueued.
    path = write(tmp_path / "good.json", [{"id": "a", "title": "x"}, {"id": "b", "title": "y"}])
    assert main(["submit", str(path), "--redis-url", redis_url]) == 0
    capsys.readouterr()
    keys, queued = redis_contents(redis_url)
    assert queued == 2
    assert keys >= 3  # two jobs and the batch record
