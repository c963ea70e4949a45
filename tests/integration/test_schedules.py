"""Scheduled batches with real worker processes: every worker takes part, each tick runs once."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import ExecutionStatus
from coditect.settings import Settings
from tests.support.faults import eventually

StartWorkers = Callable[..., Any]
TICK = re.compile(r"^every-2s-(\d{8}T\d{6}Z)$")


def tick_of(batch_id: str) -> datetime:
    match = TICK.match(batch_id)
    assert match, batch_id
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S%z")


@pytest.mark.timeout(90)
async def test_a_schedule_every_2_s_on_two_workers_gives_one_batch_per_tick_also_when_one_dies(
    real_settings: Settings, start_workers: StartWorkers, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    schedules = tmp_path / "schedules.json"
    schedules.write_text(
        json.dumps(
            {
                "schedules": [
                    {
                        "name": "every-2s",
                        "cron": "*/2 * * * * *",
                        "tasks": [{"id": "hello", "title": "Say hello"}],
                    }
                ]
            }
        )
    )
    victim, survivor = await start_workers(2, CODITECT_SCHEDULE_FILE=str(schedules))
    async with ProjectOrchestrator(real_settings) as orch:
        await eventually(lambda: _batches(orch, 3), timeout_s=15, what="three ticks")
        assert await victim.kill() == -signal.SIGKILL  # the other worker goes on alone
        await eventually(lambda: _batches(orch, 6), timeout_s=20, what="three more ticks")
        await survivor.stop()  # no tick after this
        batches = [summary for summary in await orch.batches() if summary.name == "every-2s"]
        await start_workers(1)  # without the schedule: runs what the last tick left queued
        finished = [await orch.wait(summary.id, timeout_s=15) for summary in batches]

    ticks = sorted(tick_of(summary.id) for summary in batches)
    assert len(ticks) == len(set(ticks)), "one batch per tick"
    assert all(later - earlier == timedelta(seconds=2) for earlier, later in itertools.pairwise(ticks)), (
        "no tick was missed, the one a worker died in included"
    )
    assert all(tick.second % 2 == 0 for tick in ticks)
    assert all(summary.fields["schedule"] == "every-2s" for summary in batches)
    assert all([r.status for r in results] == [ExecutionStatus.SUCCESS] for results in finished)

    code = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coditect", "schedule", "--json",
        env={**worker_env, "CODITECT_SCHEDULE_FILE": str(schedules)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await code.communicate()
    assert code.returncode == 0, err.decode()
    (listed,) = json.loads(out)
    assert (listed["name"], listed["cron"], listed["tasks"]) == ("every-2s", "*/2 * * * * *", 1)
    assert listed["last_batch_id"] == max(batches, key=lambda summary: tick_of(summary.id)).id
    assert TICK.match(listed["next_batch_id"])


async def _batches(orch: ProjectOrchestrator, count: int) -> bool:
    return len([summary for summary in await orch.batches() if summary.name == "every-2s"]) >= count
