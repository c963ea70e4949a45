"""The scheduled batches section of the batches page: read from the real schedule file and Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.keys import SCHEDULES_KEY
from coditect.settings import Settings
from coditect.web.schedules import read_schedules
from tests.web.conftest import asgi_client

NOW = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)


def schedule_file(tmp_path: Path, cron: str = "0 2 * * *") -> Path:
    path = tmp_path / "schedules.json"
    entry = {"name": "nightly", "cron": cron, "tasks": [{"title": "a"}, {"title": "b"}]}
    path.write_text(json.dumps({"schedules": [entry]}), encoding="utf-8")
    return path


async def test_no_section_without_a_schedule_file(embedded_settings: Settings) -> None:
    async with ProjectOrchestrator(embedded_settings) as orch:
        assert await read_schedules(embedded_settings, orch.agents, orch.redis, NOW) is None


async def test_entries_with_their_next_run_and_last_batch(
    tmp_path: Path, embedded_settings: Settings
) -> None:
    settings = embedded_settings.model_copy(update={"schedule_file": schedule_file(tmp_path)})
    async with ProjectOrchestrator(settings) as orch:
        schedules = await read_schedules(settings, orch.agents, orch.redis, NOW)
        assert schedules is not None
        assert schedules.error is None
        [entry] = schedules.entries
        assert (entry.name, entry.cron, entry.tasks) == ("nightly", "0 2 * * *", 2)
        assert entry.next_run == datetime(2026, 1, 2, 2, 0, tzinfo=UTC)
        assert (entry.next_batch_id, entry.last_batch_id) == ("nightly-20260102T020000Z", None)
        await orch.redis.hset(SCHEDULES_KEY, "nightly", "nightly-20260101T020000Z")  # type: ignore[misc]
        schedules = await read_schedules(settings, orch.agents, orch.redis, NOW)
        assert schedules is not None
        assert schedules.entries[0].last_batch_id == "nightly-20260101T020000Z"


async def test_a_schedule_file_that_cannot_be_read_says_why(
    tmp_path: Path, embedded_settings: Settings
) -> None:
    path = tmp_path / "schedules.json"
    path.write_text('{"schedules": [{"name": "x", "cron": "61 * * * *", "tasks": []}]}', encoding="utf-8")
    settings = embedded_settings.model_copy(update={"schedule_file": path})
    async with ProjectOrchestrator(settings) as orch:
        schedules = await read_schedules(settings, orch.agents, orch.redis, NOW)
    assert schedules is not None
    assert schedules.entries == []
    assert schedules.error is not None
    assert "cron" in schedules.error


async def test_the_batches_page_shows_scheduled_batches(tmp_path: Path, embedded_settings: Settings) -> None:
    settings = embedded_settings.model_copy(update={"schedule_file": schedule_file(tmp_path, "<b> 2 * * *")})
    async with ProjectOrchestrator(settings) as orch, asgi_client(orch) as client:
        html = (await client.get("/")).text
    assert "<h2>Scheduled batches</h2>" in html
    assert "Could not read the schedule" in html
    assert "&lt;b&gt; 2 * * *" in html  # the file's text, escaped
    assert "<b>" not in html
    settings = embedded_settings.model_copy(update={"schedule_file": schedule_file(tmp_path)})
    async with ProjectOrchestrator(settings) as orch, asgi_client(orch) as client:
        await orch.redis.hset(SCHEDULES_KEY, "nightly", "nightly-20260101T020000Z")  # type: ignore[misc]
        html = (await client.get("/")).text
    assert "<td>nightly</td><td><code>0 2 * * *</code></td>" in html
    assert '<a href="/batches/nightly-20260101T020000Z">nightly-20260101T020000Z</a>' in html
