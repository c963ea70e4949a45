"""The ``coditect`` command, called in-process through ``main([...])`` and, for start-up, as a process."""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from coditect.cli.app import main
from coditect.cli.demo import DEMO_TASKS
from coditect.cli.render import (
    excerpt,
    format_usd,
    progress_line,
    results_table,
    status_counts,
    summary_line,
)
from coditect.client.orchestrator import BatchProgress
from coditect.models import ExecutionResult, ExecutionStatus, TokenUsage
from coditect.settings import Settings

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
HEAVY_MODULES = ("arq", "anthropic", "pydantic", "pydantic_settings", "redis", "fakeredis", "httpx")


def write_batch(tmp_path: Path, data: Any, name: str = "batch.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, list[dict[str, Any]], str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def single_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("coditect: error: ")
    assert "Traceback" not in err
    return lines[0]


SIMPLE_BATCH = {
    "name": "simple",
    "tasks": [
        {"id": "first", "title": "Summarise the ADR", "agent": "writer"},
        {"id": "second", "title": "Review the summary", "agent": "reviewer", "depends_on": ["first"]},
        {"id": "third", "title": "Write a test", "agent": "coder"},
    ],
}


# ---------------------------------------------------------------------------------------------
# demo and run, embedded


def test_demo_json_is_one_deterministic_list_whatever_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo must ignore a Redis URL and a provider choice from the environment.
    monkeypatch.setenv("CODITECT_REDIS_URL", "redis://127.0.0.1:1")
    monkeypatch.setenv("CODITECT_LLM_PROVIDER", "anthropic")
    monkeypatch.setenv("CODITECT_OFFLINE_LATENCY_S", "0")
    code, first, err = run_json(capsys, ["demo", "--json"])
    assert code == 0
    assert err == ""
    assert [item["task_id"] for item in first] == [task["id"] for task in DEMO_TASKS]
    assert {item["status"] for item in first} == {"success"}
    assert {item["provider"] for item in first} == {"offline"}
    assert all(item["output"].startswith("[offline offline-1 #") for item in first)
    assert len({item["agent"] for item in first}) == 5
    assert all(item["duration_s"] < 0.5 for item in first)  # the user's latency (0) wins over the demo's

    code, second, _ = run_json(capsys, ["demo", "--json"])
    assert code == 0
    assert [item["output"] for item in second] == [item["output"] for item in first]


def test_demo_prints_a_table_with_the_demo_latency(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # stderr is not a terminal here: no progress line
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("TASK"))
    assert header.split() == ["TASK", "STATUS", "DURATION", "TOKENS", "(IN+OUT)", "OUTPUT", "/", "ERROR"]
    rows = [line for line in lines if line.split()[:1] in ([task["id"]] for task in DEMO_TASKS)]
    assert len(rows) == len(DEMO_TASKS)
    for row in rows:
        assert row.split()[1] == "success"
        assert 0.5 <= float(row.split()[2]) < 5  # the demo's default latency of 0.5 s
        assert re.search(r"\d+\+\d+", row)
    assert "[offline offline-1 #" in out
    assert re.search(r"^6 tasks: 6 succeeded in \d+\.\d s$", out, re.MULTILINE)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_line_rewritten_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODITECT_OFFLINE_LATENCY_S", "0.05")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["demo"]) == 0
    drawn = terminal.getvalue()
    assert "\n" not in drawn
    frames = [frame.strip() for frame in drawn.split("\r") if frame.strip()]
    assert frames
    assert all(re.fullmatch(r"\d/6 done · \d running · 0 failed · \d+\.\ds", frame) for frame in frames)
    assert frames[-1].startswith("6/6 done")
    assert drawn.endswith("\r")  # the line is wiped before the table is printed
    assert "6 tasks: 6 succeeded" in capsys.readouterr().out


def test_run_embedded_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, results, err = run_json(capsys, ["run", str(write_batch(tmp_path, SIMPLE_BATCH)), "--json"])
    assert code == 0
    assert err == ""
    assert [item["task_id"] for item in results] == ["first", "second", "third"]
    assert [item["status"] for item in results] == ["success"] * 3
    assert [item["agent"] for item in results] == ["writer", "reviewer", "coder"]
    parsed = [ExecutionResult.model_validate(item) for item in results]
    assert all(result.usage.input_tokens > 0 and result.worker for result in parsed)


def test_run_with_batch_id_and_toml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_batch(tmp_path, '[[tasks]]\nid = "only"\ntitle = "From TOML"\n', name="batch.toml")
    assert main(["run", str(path), "--batch-id", "my-batch.1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^only\s+success\s", out, re.MULTILINE)
    assert "1 task: 1 succeeded" in out


@pytest.fixture
def broken_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An agent whose HTTP endpoint is a closed port: its tasks fail at once, without retries."""
    agents = tmp_path / "agents.json"
    agents.write_text(
        json.dumps({"agents": [{"name": "broken", "mode": "api", "endpoint": "http://127.0.0.1:1/"}]})
    )
    monkeypatch.setenv("CODITECT_AGENTS_FILE", str(agents))
    monkeypatch.setenv("CODITECT_MAX_TRIES", "1")
    return "broken"


FAILING_BATCH = {
    "tasks": [
        {"id": "ok", "title": "Works"},
        {"id": "bad", "title": "Fails", "agent": "broken"},
        {"id": "after", "title": "Needs bad", "depends_on": ["bad"]},
    ]
}


def test_run_with_a_failing_task_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broken_agent: str
) -> None:
    code, results, _ = run_json(capsys, ["run", str(write_batch(tmp_path, FAILING_BATCH)), "--json"])
    assert code == 1
    assert [item["status"] for item in results] == ["success", "failed", "cancelled"]
    assert "cannot reach http://127.0.0.1:1/" in results[1]["error"]
    assert results[1]["attempts"] == 1
    assert "dependency bad did not succeed" in results[2]["error"]


def test_run_table_shows_errors_and_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broken_agent: str
) -> None:
    assert main(["run", str(write_batch(tmp_path, FAILING_BATCH))]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^bad\s+failed\s.*cannot reach http://127\.0\.0\.1:1/", out, re.MULTILINE)
    assert re.search(r"^3 tasks: 1 succeeded, 1 failed, 1 cancelled in \d+\.\d s$", out, re.MULTILINE)


def test_run_timeout_marks_unfinished_tasks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODITECT_OFFLINE_LATENCY_S", "60")
    started = time.monotonic()
    code, results, _ = run_json(
        capsys, ["run", str(write_batch(tmp_path, SIMPLE_BATCH)), "--json", "--timeout", "0.2"]
    )
    assert code == 1
    # "second" waits for "first", so it never starts: it ends with the batch's deadline too
    assert [item["status"] for item in results] == ["timeout", "timeout", "timeout"]
    assert all("timed out before this task finished" in item["error"] for item in results)
    assert [item["attempts"] for item in results] == [1, 0, 1]
    assert time.monotonic() - started < 10


BAD_FILES = [
    pytest.param('{"tasks": [', "not valid JSON", "", id="not-json"),
    pytest.param(b"\xff\xfe[\x00]\x00", "not UTF-8", "", id="not-utf8"),
    pytest.param("7", "expected an object", "", id="top-level-number"),
    pytest.param({"tasks": []}, "no tasks", "tasks", id="no-tasks"),
    pytest.param({"tasks": [{"title": "a"}], "nmae": "x"}, "unknown top-level key", "nmae", id="unknown-key"),
    pytest.param(
        [{"id": "a", "title": "ok"}, {"id": "b", "title": 5}], "valid string", "tasks[1].title", id="t-num"
    ),
    pytest.param([{"id": "a", "title": "   "}], "at least 1 character", "tasks[0].title", id="title-blank"),
    pytest.param([{"id": "a"}], "required", "tasks[0].title", id="title-missing"),
    pytest.param([{"id": "a b", "title": "x"}], "pattern", "tasks[0].id", id="bad-id"),
    pytest.param(
        [{"id": "a", "title": "x", "description": "d" * 1_000_000}],
        "200000",
        "tasks[0].description",
        id="1MB",
    ),
    pytest.param(
        [{"id": "a", "title": "x", "agent": "poet"}], "unknown agent 'poet'", "tasks[0].agent", id="agent"
    ),
    pytest.param(
        [{"id": "a", "title": "x"}, {"id": "a", "title": "y"}], "more than once", "tasks[1].id", id="dup"
    ),
    pytest.param(
        [{"id": "a", "title": "x", "depends_on": ["b"]}, {"id": "b", "title": "y", "depends_on": ["a"]}],
        "dependency cycle",
        "depends_on",
        id="cycle",
    ),
    pytest.param('{"name": "\\ud800", "tasks": [{"title": "a"}]}', "lone surrogate", "name", id="surrogate"),
    pytest.param(
        [{"id": "a", "title": "x", "timeout_s": "10"}], "valid number", "tasks[0].timeout_s", id="str-s"
    ),
    pytest.param('[{"title": "a", "metadata": {"x": NaN}}]', "NaN is not a JSON number", "", id="nan"),
    pytest.param("[" * 100_000 + "]" * 100_000, "nested too deeply", "", id="deep"),
]


@pytest.mark.parametrize(("content", "expected", "field"), BAD_FILES)
def test_run_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: Any, expected: str, field: str
) -> None:
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_batch(tmp_path, content, name="bad.json")
    assert main(["run", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    line = single_error_line(err)
    assert expected in line
    assert f"coditect: error: {path}: " in line
    if field:
        assert f": {field}: " in line


@pytest.mark.timeout(10)  # a FIFO used to block the command for ever
def test_run_a_fifo_exits_2_at_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fifo = tmp_path / "batch.json"
    os.mkfifo(fifo)
    assert main(["run", str(fifo)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert single_error_line(err) == f"coditect: error: {fifo}: not a regular file (a FIFO)"


def test_run_whose_workers_cannot_start_exits_2_at_once_with_the_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No Redis: the in-process workers need the provider's key; the command used to wait for ever.
    monkeypatch.setenv("CODITECT_LLM_PROVIDER", "anthropic")

    code = main(["run", str(write_batch(tmp_path, SIMPLE_BATCH))])

    out, err = capsys.readouterr()
    assert code == 2
    assert "needs an API key" in single_error_line(err)
    assert out == ""


def test_run_refuses_a_script_agent_without_its_script_before_running_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    agents = tmp_path / "agents.json"
    agents.write_text(json.dumps({"agents": [{"name": "shouter", "mode": "script"}]}))
    monkeypatch.setenv("CODITECT_AGENTS_FILE", str(agents))
    monkeypatch.setenv("CODITECT_SCRIPTS_DIR", str(scripts))
    path = write_batch(tmp_path, [{"id": "a", "title": "x"}, {"id": "b", "title": "y", "agent": "shouter"}])
    assert main(["run", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    script = scripts.resolve() / "execute_shouter.py"
    assert single_error_line(err) == (
        f"coditect: error: {path}: tasks[1].agent: agent 'shouter' runs a legacy script: "
        f"script not found: {script}"
    )


def test_run_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert main(["run", str(missing), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert str(missing) in single_error_line(err)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param([], "required: COMMAND", id="no-command"),
        pytest.param(["run"], "required: FILE", id="no-file"),
        pytest.param(
            ["run", "x.json", "--timeout", "-1"], "positive number of seconds", id="negative-timeout"
        ),
        pytest.param(["run", "x.json", "--timeout", "nan"], "positive number of seconds", id="nan-timeout"),
        pytest.param(["frobnicate"], "invalid choice", id="unknown-command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert expected in single_error_line(err)


def test_bad_batch_id_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", str(write_batch(tmp_path, SIMPLE_BATCH)), "--batch-id", "a b"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "batch_id: " in single_error_line(err)


def test_invalid_setting_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODITECT_MAX_JOBS", "lots")
    assert main(["run", str(write_batch(tmp_path, SIMPLE_BATCH))]) == 2
    assert "CODITECT_MAX_JOBS" in single_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["worker"], id="worker"),
        pytest.param(["worker", "--burst", "--redis-url", ""], id="worker-empty-url"),
        pytest.param(["submit", "batch.json"], id="submit"),
        pytest.param(["status", "b-1"], id="status"),
        pytest.param(["results", "b-1"], id="results"),
        pytest.param(["cancel", "b-1"], id="cancel"),
        pytest.param(["watch", "b-1"], id="watch"),
    ],
)
def test_shared_redis_commands_need_a_url(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    Path("batch.json").write_text(json.dumps(SIMPLE_BATCH))
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    line = single_error_line(err)
    assert "CODITECT_REDIS_URL" in line
    assert "--redis-url" in line


@pytest.mark.parametrize("command", ["run", "worker", "submit", "status"])
def test_redis_url_that_is_not_redis_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    batch_file = str(write_batch(tmp_path, SIMPLE_BATCH))
    target = {"run": [batch_file], "submit": [batch_file], "status": ["b-1"], "worker": []}[command]
    assert main([command, *target, "--redis-url", "http://user:secret@example.invalid/"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    line = single_error_line(err)
    assert "must start with redis:// or rediss://" in line
    assert "secret" not in line


@pytest.mark.parametrize(
    ("command", "url", "expected"),
    [
        pytest.param(
            "status",
            "redis://127.0.0.1:1/0?password=hunter2hunter2",
            "cannot reach Redis at redis://127.0.0.1:1/0?password=***: ",
            id="query",
        ),
        pytest.param(
            "results",
            "redis://127.0.0.1:1/0?db=0&password=hunter2hunter2",
            "cannot reach Redis at redis://127.0.0.1:1/0?db=0&password=***: ",
            id="second-parameter",
        ),
        pytest.param(
            "status",
            "redis+sentinel://127.0.0.1:1/m?password=hunter2hunter2",
            "query parameters and fragments are not supported with redis+sentinel://: "
            "redis+sentinel://127.0.0.1:1/m?password=***",
            id="sentinel",
        ),
    ],
)
def test_a_password_given_as_a_query_parameter_is_masked_in_the_error_line(
    capsys: pytest.CaptureFixture[str], command: str, url: str, expected: str
) -> None:
    assert main([command, "b-1", "--redis-url", url]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    line = single_error_line(err)
    assert expected in line
    assert "hunter2" not in line


def test_run_against_unreachable_redis_exits_2_quickly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    started = time.monotonic()
    url = "redis://:hunter2@127.0.0.1:1"
    assert main(["run", str(write_batch(tmp_path, SIMPLE_BATCH)), "--redis-url", url]) == 2
    assert time.monotonic() - started < 5
    out, err = capsys.readouterr()
    assert out == ""
    line = single_error_line(err)
    assert "redis://:***@127.0.0.1:1" in line
    assert "hunter2" not in err


# ---------------------------------------------------------------------------------------------
# start-up


def test_python_m_coditect_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "coditect", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: coditect")
    commands = (
        "demo",
        "run",
        "worker",
        "submit",
        "status",
        "results",
        "cancel",
        "watch",
        "events",
        "batches",
    )
    for command in (*commands, "schedule", "dead-letters"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.MULTILINE)


def test_console_script_help() -> None:
    script = shutil.which("coditect", path=str(Path(sys.executable).parent))
    assert script is not None, "the coditect console script is not installed next to this interpreter"
    proc = subprocess.run([script, "run", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--timeout SECONDS" in proc.stdout


def test_help_imports_no_heavy_module() -> None:
    code = (
        "import json, sys\n"
        "from coditect.cli.app import main\n"
        "code = main(['--help'])\n"
        f"heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
        "print('HEAVY=' + json.dumps(heavy), file=sys.stderr)\n"
        "raise SystemExit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=[]" in proc.stderr.splitlines(), "coditect --help imported: " + proc.stderr


# ---------------------------------------------------------------------------------------------
# rendering


def result(task_id: str, status: ExecutionStatus, **fields: Any) -> ExecutionResult:
    return ExecutionResult(task_id=task_id, status=status, **fields)


def test_progress_line_counts_each_final_status_and_says_what_is_wrong() -> None:
    progress = BatchProgress(
        total=100, succeeded=9, failed=2, timeout=0, cancelled=1, running=5, elapsed_s=3.44
    )
    assert progress_line(progress) == "   12/100 done · 5 running · 2 failed · 1 cancelled · 3.4s"
    stuck = BatchProgress(
        total=3, succeeded=0, failed=0, timeout=1, cancelled=0, running=0, elapsed_s=9.0,
        note="no worker is alive on queue coditect:queue",
    )  # fmt: skip
    assert progress_line(stuck) == (
        "  1/3 done · 0 running · 0 failed · 1 timeout · 9.0s · no worker is alive on queue coditect:queue"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "$0.00"),
        (0.000399, "$0.000399"),
        (0.00043, "$0.000430"),
        (0.0004, "$0.000400"),
        (0.0375, "$0.0375"),
        (0.045, "$0.0450"),
        (0.5, "$0.500"),
        (2.5, "$2.50"),
        (1234.5, "$1,234.50"),
    ],
)
def test_dollars_read_with_three_significant_digits_and_cents(value: float, text: str) -> None:
    assert format_usd(value) == text


def test_results_table_aligns_and_cleans_output() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    rows = [
        result("alpha", ExecutionStatus.SUCCESS, output="line one\nline two\x1b[31m", duration_s=1.234,
               usage=TokenUsage(input_tokens=10, output_tokens=200)),
        result("b", ExecutionStatus.FAILED, error="boom " * 50, duration_s=75.0),
        result("c", ExecutionStatus.QUEUED, attempts=0),
    ]  # fmt: skip
    table = results_table(rows, width=80, elapsed_s=2.06)
    lines = table.splitlines()
    assert "\x1b" not in table
    assert all(len(line) <= 80 for line in lines)
    status_column = lines[0].index("STATUS")
    assert [line[status_column:].split()[0] for line in lines[1:4]] == ["success", "failed", "queued"]
    assert "10+200" in lines[1]
    assert "line one line two" in lines[1]
    assert "1m15s" in lines[2]
    assert lines[2].endswith("…")
    assert lines[3].split()[2:4] == ["-", "-"]
    assert lines[-1] == "3 tasks: 1 succeeded, 1 failed, 1 queued in 2.1 s"
    # Without a measured time the summary spans the results' own timestamps.
    timed = [result("x", ExecutionStatus.SUCCESS, started_at=start, finished_at=start + timedelta(seconds=4))]
    assert summary_line(timed) == "1 task: 1 succeeded in 4.0 s"
    assert summary_line([result("y", ExecutionStatus.PENDING)]) == "1 task: 1 pending"


def test_status_counts_and_excerpt() -> None:
    counts = status_counts([result("a", ExecutionStatus.SUCCESS), result("b", ExecutionStatus.SUCCESS)])
    assert counts == {s.value: (2 if s is ExecutionStatus.SUCCESS else 0) for s in ExecutionStatus}
    assert list(counts) == [s.value for s in ExecutionStatus]
    assert excerpt("a\tb\r\nc", 10) == "a b c"
    assert excerpt("abcdef", 4) == "abc…"


# ---------------------------------------------------------------------------------------------
# against a real Redis: submit, worker, status, results, cancel, watch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def submit(capsys: pytest.CaptureFixture[str], path: Path, url: str, *extra: str) -> str:
    assert main(["submit", str(path), "--redis-url", url, "--json", *extra]) == 0
    out = capsys.readouterr().out
    return str(json.loads(out)["batch_id"])


def status_json(capsys: pytest.CaptureFixture[str], batch_id: str, url: str) -> tuple[int, dict[str, Any]]:
    code = main(["status", batch_id, "--redis-url", url, "--json"])
    return code, json.loads(capsys.readouterr().out)


NO_DEPS_BATCH = {"name": "plain", "tasks": [{"id": "a", "title": "One"}, {"id": "b", "title": "Two"}]}


def test_submit_burst_worker_status_results(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str
) -> None:
    batch_id = submit(capsys, write_batch(tmp_path, NO_DEPS_BATCH), redis_url, "--batch-id", "nightly-1")
    assert batch_id == "nightly-1"

    code, status = status_json(capsys, batch_id, redis_url)
    assert code == 1
    assert (status["batch_id"], status["id"], status["name"], status["total"]) == (
        batch_id,
        batch_id,
        "plain",
        2,
    )
    assert status["counts"] == {**dict.fromkeys(status["counts"], 0), "queued": 2}
    assert status["finished_at"] is None

    assert main(["worker", "--redis-url", redis_url, "--burst"]) == 0
    assert "coditect worker ready" in capsys.readouterr().err

    code, status = status_json(capsys, batch_id, redis_url)
    assert code == 0
    assert status["counts"]["success"] == 2

    assert main(["status", batch_id, "--redis-url", redis_url]) == 0
    assert re.search(r"^\s+success\s+2$", capsys.readouterr().out, re.MULTILINE)

    code, report, _ = run_json(capsys, ["results", batch_id, "--redis-url", redis_url, "--json"])
    assert code == 0
    results = report["results"]
    assert [(item["task_id"], item["status"]) for item in results] == [("a", "success"), ("b", "success")]
    assert report["totals"]["usage"]["in"] == sum(item["usage"]["input_tokens"] for item in results)

    assert main(["results", batch_id, "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "2 tasks: 2 succeeded" in out
    assert re.search(r"^tokens: \d+ in \+ \d+ out; cost \$", out, re.MULTILINE)

    # watch on a finished batch prints its results at once
    code, watched, _ = run_json(capsys, ["watch", batch_id, "--redis-url", redis_url, "--json"])
    assert code == 0
    assert watched == results

    assert main(["cancel", batch_id, "--redis-url", redis_url]) == 0
    assert f"batch {batch_id} had already finished: nothing to cancel" in capsys.readouterr().out
    code, status, _ = run_json(capsys, ["status", batch_id, "--redis-url", redis_url, "--json"])
    assert (status["cancelled"], status["counts"]["cancelled"]) == (None, 0), (
        "a finished batch stays as it was"
    )


def test_cancel_before_any_worker(capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str) -> None:
    batch_id = submit(capsys, write_batch(tmp_path, NO_DEPS_BATCH), redis_url)
    assert main(["cancel", batch_id, "--redis-url", redis_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "batch_id": batch_id, "dequeued": 2, "unstarted": 0, "aborted": 0,
    }  # fmt: skip

    code, report, _ = run_json(capsys, ["results", batch_id, "--redis-url", redis_url, "--json"])
    assert code == 1
    assert [item["status"] for item in report["results"]] == ["cancelled", "cancelled"]
    # A worker started now finds nothing to run.
    assert main(["worker", "--redis-url", redis_url, "--burst"]) == 0
    capsys.readouterr()
    assert status_json(capsys, batch_id, redis_url)[1]["counts"]["cancelled"] == 2


def test_unknown_batch_and_submit_refusals(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str
) -> None:
    for command in ("status", "results", "cancel", "watch"):
        assert main([command, "no-such-batch", "--redis-url", redis_url]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert "no batch 'no-such-batch'" in single_error_line(err)
    # a cycle is refused before anything reaches Redis
    cycle = [{"id": "a", "title": "a", "depends_on": ["b"]}, {"id": "b", "title": "b", "depends_on": ["a"]}]
    assert main(["submit", str(write_batch(tmp_path, cycle)), "--redis-url", redis_url]) == 2
    assert "dependency cycle" in single_error_line(capsys.readouterr().err)
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.close()


class WorkerProcess:
    """``python -m coditect worker`` with its stderr read line by line on a thread."""

    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coditect", "worker", "--redis-url", url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put("")  # end of stream

    def wait_for(self, text: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            self.seen.append(line)
            if text in line:
                return
            if line == "":
                raise AssertionError(f"worker exited before {text!r}:\n{''.join(self.seen)}")

    def stop(self, signum: signal.Signals) -> tuple[int, str]:
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=30)
        self.close()
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code, "".join(self.seen)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def worker_process(redis_url: str) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(redis_url, {"CODITECT_OFFLINE_LATENCY_S": "0.3"})
    try:
        worker.wait_for("coditect worker ready")
        yield worker
    finally:
        worker.close()


def test_run_and_watch_with_a_worker_process_then_sigterm(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str, worker_process: WorkerProcess
) -> None:
    batch_file = str(write_batch(tmp_path, SIMPLE_BATCH))
    code, results, _ = run_json(capsys, ["run", batch_file, "--redis-url", redis_url, "--json"])
    assert code == 0
    assert [item["status"] for item in results] == ["success"] * 3
    assert {item["worker"] for item in results} == {f"{socket.gethostname()}:{worker_process.proc.pid}"}

    batch_id = submit(capsys, write_batch(tmp_path, NO_DEPS_BATCH), redis_url)
    assert main(["watch", batch_id, "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^a\s+success\s", out, re.MULTILINE)
    assert "2 tasks: 2 succeeded" in out

    client = redis.Redis.from_url(redis_url)
    assert client.exists("coditect:queue:health-check")
    code, stderr = worker_process.stop(signal.SIGTERM)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "worker stopped by a signal" in stderr
    assert not client.exists("coditect:queue:health-check")  # worker.close() ran
    client.close()


def test_sigint_during_a_job_stops_at_once_and_requeues_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A script agent that tells the test, through a FIFO, that it is running, then takes a minute.
    fifo = tmp_path / "started.fifo"
    os.mkfifo(fifo)
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "execute_slow.py").write_text(
        f"import sys, time\nsys.stdin.read()\nopen({str(fifo)!r}, 'w').write('started\\n')\ntime.sleep(60)\n"
    )
    agents = tmp_path / "agents.json"
    agents.write_text(json.dumps({"agents": [{"name": "slow", "mode": "script"}]}))
    monkeypatch.setenv("CODITECT_AGENTS_FILE", str(agents))
    monkeypatch.setenv("CODITECT_SCRIPTS_DIR", str(scripts))
    started: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: started.put(fifo.read_text()), daemon=True).start()

    worker = WorkerProcess(redis_url, {"CODITECT_SHUTDOWN_GRACE_S": "0"})
    try:
        worker.wait_for("coditect worker ready")
        batch = [{"id": "slow", "title": "Takes a minute", "agent": "slow"}]
        batch_id = submit(capsys, write_batch(tmp_path, batch), redis_url)
        assert started.get(timeout=30) == "started\n"
        code, status = status_json(capsys, batch_id, redis_url)
        assert (code, status["counts"]["running"]) == (1, 1)
        stopping = time.monotonic()
        code, stderr = worker.stop(signal.SIGINT)
        assert time.monotonic() - stopping < 20
    finally:
        worker.close()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "worker stopped by a signal" in stderr
    # The job is not lost and not failed: it waits in the queue for the next worker.
    code, status = status_json(capsys, batch_id, redis_url)
    assert code == 1
    assert status["counts"]["queued"] == 1
    client = redis.Redis.from_url(redis_url)
    assert not client.exists(f"arq:result:coditect:{batch_id}:slow")
    client.close()


@pytest.mark.parametrize("command", ["status", "results", "cancel"])
def test_a_redis_that_never_answers_ends_a_one_shot_command_with_exit_2(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import coditect.cli.batch_commands

    monkeypatch.setattr(coditect.cli.batch_commands, "ONE_SHOT_DEADLINE_S", 0.5)
    with socket.socket() as black_hole:  # accepts connections (the kernel does), never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        url = f"redis://:secret@127.0.0.1:{black_hole.getsockname()[1]}"
        started = time.monotonic()
        code = main([command, "b-1", "--redis-url", url])
        elapsed = time.monotonic() - started

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    port = url.rsplit(":", 1)[1]
    assert (
        err.strip() == f"coditect: error: Redis at redis://:***@127.0.0.1:{port} did not answer within 0.5 s"
    )
    assert elapsed < 5


async def test_a_timeout_from_a_command_without_a_deadline_is_still_one_line(settings: Settings) -> None:
    from coditect.cli.shared import open_orchestrator
    from coditect.errors import BackendUnavailableError

    # run and watch have no deadline of their own: this used to format None and crash with TypeError.
    with pytest.raises(BackendUnavailableError, match=r"^the embedded Redis did not answer in time$"):
        async with open_orchestrator(settings, command="run", shared=False):
            raise TimeoutError


@pytest.mark.parametrize("log_format", ["json", "text", "invalid"])
def test_the_commands_log_lines_follow_coditect_log_format(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    from coditect.cli.app import _logging

    monkeypatch.setenv("CODITECT_LOG_FORMAT", log_format)
    with _logging("run"):
        logging.getLogger("coditect.backoff").warning("Redis unreachable at %s", "redis://:hunter2@h:1/0")
    err = capsys.readouterr().err
    if log_format == "json":
        line = json.loads(err)
        assert (line["level"], line["logger"]) == ("WARNING", "coditect.backoff")
        assert line["message"] == "Redis unreachable at redis://:***@h:1/0"
    else:  # an invalid format is the command's to report; its log lines stay text meanwhile
        assert err == "coditect: WARNING: coditect.backoff: Redis unreachable at redis://:***@h:1/0\n"


def test_an_invalid_log_format_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CODITECT_LOG_FORMAT", "xml")
    assert main(["run", str(write_batch(tmp_path, SIMPLE_BATCH))]) == 2
    assert "CODITECT_LOG_FORMAT" in single_error_line(capsys.readouterr().err)


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path: Path) -> None:
    """``coditect demo --json | head -c 0``: no traceback, the shell's SIGPIPE exit code."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    process = subprocess.run(
        [sys.executable, "-m", "coditect", "demo", "--json"],
        stdout=write_end, stderr=subprocess.PIPE, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    os.close(write_end)

    assert process.returncode == 141
    assert b"Traceback" not in process.stderr
    assert b"BrokenPipe" not in process.stderr
