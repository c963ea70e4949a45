"""The commands added with batches in Redis, in-process through ``main([...])`` on the suite's own
redis-server, with in-process burst workers: submit with dependencies, watch, events, batches,
schedule, dead letters, budgets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import redis

from coditect.cli.app import main
from coditect.keys import DEAD_LETTERS_KEY

GRAPH = {
    "name": "graph",
    "tasks": [
        {"id": "a", "title": "first"},
        {"id": "b", "title": "second", "depends_on": ["a"]},
        {"id": "c", "title": "third", "depends_on": ["b"]},
    ],
}


def write(tmp_path: Path, data: Any, name: str = "batch.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def out_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, Any]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def burst_worker(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--redis-url", redis_url, "--burst"]) == 0
    capsys.readouterr()


def test_a_submitted_graph_runs_on_the_workers_and_watch_returns_its_results(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str
) -> None:
    code, submitted = out_json(
        capsys, ["submit", str(write(tmp_path, GRAPH)), "--redis-url", redis_url, "--json"]
    )
    assert code == 0
    batch_id = submitted["batch_id"]

    burst_worker(redis_url, capsys)  # it runs a, then b (released by a's result), then c

    code, watched = out_json(capsys, ["watch", batch_id, "--redis-url", redis_url, "--json"])
    assert code == 0
    assert [(item["task_id"], item["status"]) for item in watched] == [
        ("a", "success"), ("b", "success"), ("c", "success"),
    ]  # fmt: skip


def test_watch_gives_up_after_its_timeout_and_the_batch_goes_on(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str
) -> None:
    assert main(["submit", str(write(tmp_path, GRAPH)), "--redis-url", redis_url, "--batch-id", "w1"]) == 0
    capsys.readouterr()

    code = main(["watch", "w1", "--redis-url", redis_url, "--json", "--timeout", "0.3"])
    out, err = capsys.readouterr()

    assert code == 1
    assert [item["status"] for item in json.loads(out)] == ["queued", "pending", "pending"]
    assert err.strip() == "coditect: watch stopped after 0.3 s; batch w1 goes on"


def test_events_print_a_batchs_history_as_json_lines_and_every_batchs_without_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str
) -> None:
    assert main(["submit", str(write(tmp_path, GRAPH)), "--redis-url", redis_url, "--batch-id", "e1"]) == 0
    capsys.readouterr()
    burst_worker(redis_url, capsys)

    assert main(["events", "e1", "--redis-url", redis_url, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["type"], line["task_id"]) for line in lines][:2] == [
        ("batch.submitted", None),
        ("task.queued", "a"),
    ]
    assert lines[-1]["type"] == "batch.finished"
    assert {"id", "type", "batch_id", "task_id", "attempt", "worker", "at"} <= set(lines[0])
    assert all(line["batch_id"] == "e1" for line in lines)

    assert main(["events", "e1", "--since", lines[-2]["id"], "--redis-url", redis_url, "--json"]) == 0
    assert [json.loads(line)["type"] for line in capsys.readouterr().out.splitlines()] == ["batch.finished"]

    assert main(["events", "--redis-url", redis_url]) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == len(lines)
    assert "task.succeeded" in text[-2]
    assert "e1/c" in text[-2]

    assert main(["events", "nope", "--redis-url", redis_url]) == 2
    assert "no batch 'nope'" in capsys.readouterr().err


def test_batches_lists_recent_batches_with_counts_as_json_and_a_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str
) -> None:
    for batch_id in ("first", "second"):
        assert (
            main(["submit", str(write(tmp_path, GRAPH)), "--redis-url", redis_url, "--batch-id", batch_id])
            == 0
        )
    burst_worker(redis_url, capsys)

    code, listed = out_json(capsys, ["batches", "--redis-url", redis_url, "--json"])

    assert code == 0
    assert [item["id"] for item in listed] == ["second", "first"]
    assert {"id", "name", "created_at", "counts"} <= set(listed[0])
    assert listed[0]["counts"]["success"] == 3
    assert listed[0]["name"] == "graph"
    assert main(["batches", "--redis-url", redis_url, "--limit", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["BATCH", "NAME", "CREATED"]
    assert len(table) == 2
    assert table[1].startswith("second")


def test_schedule_lists_schedules_with_their_next_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedules = write(
        tmp_path,
        {"schedules": [{"name": "nightly", "cron": "0 3 * * *", "tasks": [{"title": "x"}]}]},
        "s.json",
    )
    monkeypatch.setenv("CODITECT_SCHEDULE_FILE", str(schedules))

    code, listed = out_json(capsys, ["schedule", "--json"])  # embedded: no last batch to read

    assert code == 0
    assert [(item["name"], item["cron"], item["tasks"]) for item in listed] == [("nightly", "0 3 * * *", 1)]
    assert listed[0]["next_run"].endswith("T03:00:00Z")
    assert listed[0]["last_batch_id"] is None
    assert main(["schedule"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("nightly")

    monkeypatch.delenv("CODITECT_SCHEDULE_FILE")
    assert main(["schedule"]) == 2
    assert "CODITECT_SCHEDULE_FILE is not set" in capsys.readouterr().err


def test_dead_letters_are_listed_and_cleared(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.lpush(
        DEAD_LETTERS_KEY, json.dumps({"job_id": "x\\xff", "reason": "job id is not UTF-8 text", "at_ms": 1})
    )
    client.close()

    code, listed = out_json(capsys, ["dead-letters", "--redis-url", redis_url, "--json"])
    assert code == 0
    assert listed == [{"job_id": "x\\xff", "reason": "job id is not UTF-8 text", "at_ms": 1}]

    assert main(["dead-letters", "--redis-url", redis_url, "--clear"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "x\\xff: job id is not UTF-8 text",
        "cleared 1 dead letter(s)",
    ]
    assert main(["dead-letters", "--redis-url", redis_url]) == 0
    assert capsys.readouterr().out.strip() == "no dead letters"


def test_a_budget_of_tokens_from_the_batch_file_ends_the_rest_cancelled(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tasks = [{"id": f"t{i}", "title": f"task {i}"} for i in range(6)]
    path = write(tmp_path, {"name": "budgeted", "budget_tokens": 60, "tasks": tasks})

    code, results = out_json(capsys, ["run", str(path), "--json"])  # embedded, one worker, one at a time?

    assert code == 1
    statuses = [item["status"] for item in results]
    assert statuses.count("success") >= 1
    assert "cancelled" in statuses
    cancelled = [item for item in results if item["status"] == "cancelled"]
    assert all(item["error"].startswith("budget exhausted: ") for item in cancelled)
    assert all(item["error"].endswith(" of 60 tokens spent") for item in cancelled)


def test_status_says_why_a_batch_stopped_before_all_its_tasks_ran(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str
) -> None:
    tasks = [{"id": f"t{i}", "title": f"task {i}"} for i in range(6)]
    path = write(tmp_path, {"name": "budgeted", "budget_tokens": 60, "tasks": tasks})
    code, submitted = out_json(capsys, ["submit", str(path), "--redis-url", redis_url, "--json"])
    assert code == 0
    burst_worker(redis_url, capsys)

    code = main(["status", submitted["batch_id"], "--redis-url", redis_url])
    text = capsys.readouterr().out
    code_json, status = out_json(
        capsys, ["status", submitted["batch_id"], "--redis-url", redis_url, "--json"]
    )

    assert code == code_json == 1
    first = text.splitlines()[0]
    assert first == f"batch {submitted['batch_id']} (budgeted): 6 tasks, finished ({status['cancelled']})", (
        text
    )
    assert re.fullmatch(r"budget exhausted: \d+ of 60 tokens spent", status["cancelled"])


@pytest.mark.parametrize("value", ["0", "-1", "abc", "inf"])
def test_a_budget_that_is_not_a_positive_amount_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str
) -> None:
    assert main(["run", str(write(tmp_path, GRAPH)), "--budget-usd", value]) == 2
    assert "expected a positive number of US dollars" in capsys.readouterr().err
