"""Scheduled batches: the schedule file, ticks, batch ids, and one batch per tick whoever submits it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis

from coditect.agents import AgentRegistry
from coditect.client.batches import BatchStore
from coditect.engine.schedule import Schedule, Scheduler, describe, load_schedules, tick_batch_id
from coditect.errors import ConfigurationError
from coditect.keys import SCHEDULES_KEY
from tests.support.fake_backend import QUEUE

AGENTS = AgentRegistry()


def at(day: int, hour: int, minute: int, second: int, *, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("0 3 * * *", at(30, 13, 0, 0), at(1, 3, 0, 0, month=12)),
        ("*/2 * * * * *", at(30, 13, 0, 1), at(30, 13, 0, 2)),
        ("30 * * * * *", at(30, 13, 0, 30), at(30, 13, 1, 30)),
    ],
    ids=["5-fields", "6-fields-seconds-first", "strictly-after"],
)  # fmt: skip
def test_next_tick_reads_5_fields_or_6_with_seconds_first(
    cron: str, after: datetime, expected: datetime
) -> None:
    assert Schedule(name="s", cron=cron, tasks=[]).next_tick(after) == expected


def test_a_ticks_batch_id_is_the_name_and_the_utc_time() -> None:
    tick = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    assert tick_batch_id("nightly-docs", tick) == "nightly-docs-20261130T030000Z"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "s", "cron": "* * * *", "tasks": []}, "expected 5 fields, or 6 with seconds first; got 4"),
        ({"name": "s", "cron": "0 0 1 1 * 2030 *", "tasks": []}, "got 7"),
        ({"name": "s", "cron": "61 * * * *", "tasks": []}, "not a valid cron expression"),
        ({"name": "s", "cron": "* * * * *"}, "'batch' (a batch file) or 'tasks' (inline), not both"),
        ({"name": "s", "cron": "* * * * *", "tasks": [], "batch": "b.json"}, "not both"),
        ({"name": "a b", "cron": "* * * * *", "tasks": []}, "schedules[0].name"),
        ({"name": "s", "cron": "* * * * *", "tasks": [], "when": "now"}, "schedules[0].when"),
    ],
    ids=["4-fields", "7-fields", "bad-minute", "no-batch", "both", "bad-name", "unknown-field"],
)
def test_a_bad_schedule_is_refused_naming_the_file_and_field(
    tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    path = write(tmp_path / "schedules.json", {"schedules": [entry]})

    with pytest.raises(ConfigurationError) as caught:
        load_schedules(path, AGENTS)

    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_repeated_names_and_bad_batches_are_refused(tmp_path: Path) -> None:
    twice = write(
        tmp_path / "twice.json", {"schedules": [{"name": "s", "cron": "* * * * *", "tasks": []}] * 2}
    )
    with pytest.raises(ConfigurationError, match="schedule name 's' appears more than once"):
        load_schedules(twice, AGENTS)

    ghost = {"name": "g", "cron": "* * * * *", "tasks": [{"title": "x", "agent": "ghost"}]}
    with pytest.raises(ConfigurationError, match=r"schedules\[0\] \(g\): .*unknown agent 'ghost'"):
        load_schedules(write(tmp_path / "ghost.json", {"schedules": [ghost]}), AGENTS)

    missing = {"name": "m", "cron": "* * * * *", "batch": "nowhere.json"}
    with pytest.raises(ConfigurationError, match=r"schedules\[0\] \(m\): .*nowhere.json"):
        load_schedules(write(tmp_path / "missing.json", {"schedules": [missing]}), AGENTS)


def test_a_batch_file_is_found_beside_the_schedule_file_and_inline_tasks_are_ordered(tmp_path: Path) -> None:
    (tmp_path / "batches").mkdir()
    write(tmp_path / "batches" / "docs.json", {"name": "docs", "tasks": [{"id": "a", "title": "A"}]})
    inline = [{"id": "late", "title": "late", "depends_on": ["early"]}, {"id": "early", "title": "early"}]
    path = tmp_path / "schedules.toml"
    path.write_text(
        '[[schedules]]\nname = "nightly"\ncron = "0 3 * * *"\nbatch = "batches/docs.json"\n\n'
        '[[schedules]]\nname = "often"\ncron = "*/30 * * * * *"\n'
        f"tasks = {json.dumps(inline)}\n".replace('"depends_on"', "depends_on")
        .replace('"id"', "id")
        .replace('"title"', "title")
        .replace(": ", " = ")
    )

    nightly, often = load_schedules(path, AGENTS)

    assert [t.id for t in nightly.tasks] == ["a"]
    assert [t.id for t in often.tasks] == ["early", "late"], "in dependency order, ready to submit"
    listed = describe([nightly, often], datetime(2026, 11, 30, 13, 0, 10, tzinfo=UTC))
    assert listed[0] == {
        "name": "nightly", "cron": "0 3 * * *", "next_run": "2026-12-01T03:00:00Z",
        "next_batch_id": "nightly-20261201T030000Z", "tasks": 1, "source": "batches/docs.json",
    }  # fmt: skip
    assert listed[1]["next_run"] == "2026-11-30T13:00:30Z"


async def test_a_tick_submitted_by_two_workers_is_one_batch(pool: ArqRedis, tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.json", {"schedules": [{"name": "s", "cron": "* * * * * *", "tasks": [{"title": "t"}]}]}
    )
    (entry,) = load_schedules(path, AGENTS)
    tick = datetime(2026, 11, 30, 13, 0, 2, tzinfo=UTC)
    first = Scheduler(BatchStore(pool, queue_name=QUEUE, keep_result_s=600), [entry])
    second = Scheduler(BatchStore(pool, queue_name=QUEUE, keep_result_s=600), [entry])

    await first._submit(entry, tick)
    await second._submit(entry, tick)

    assert first.submitted == ["s-20261130T130002Z"]
    assert second.submitted == []
    assert await pool.zcard(QUEUE) == 1
    assert await pool.hget(SCHEDULES_KEY, "s") == b"s-20261130T130002Z"
    summary = await BatchStore(pool, queue_name=QUEUE, keep_result_s=600).summary("s-20261130T130002Z")
    assert summary is not None
    assert (summary.name, summary.fields["schedule"]) == ("s", "s")
