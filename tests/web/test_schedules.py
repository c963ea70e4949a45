"""The scheduled batches section and its seam to the schedule module (not in coditect yet: these
tests stand one in, built to the contract in coditect/web/schedules.py)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.settings import Settings
from coditect.web.schedules import SCHEDULE_MODULE, read_schedules
from tests.web.conftest import asgi_client

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class Entry:
    name: str
    cron: str

    def next_run(self, after: datetime) -> datetime:
        return after + timedelta(hours=1)


@pytest.fixture
def schedule_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType(SCHEDULE_MODULE)
    monkeypatch.setitem(sys.modules, SCHEDULE_MODULE, module)
    return module


def settings_with(path: Path | None) -> Settings:
    return Settings(_env_file=None, schedule_file=path)  # type: ignore[call-arg]


def test_no_section_without_a_schedule_file_or_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert read_schedules(settings_with(None), NOW) is None
    monkeypatch.setitem(sys.modules, SCHEDULE_MODULE, None)  # not importable
    assert read_schedules(settings_with(tmp_path / "schedule.json"), NOW) is None


def test_entries_and_their_next_runs(tmp_path: Path, schedule_module: types.ModuleType) -> None:
    path = tmp_path / "schedule.json"
    schedule_module.load_schedule_file = lambda p: [Entry("nightly", "0 2 * * *")] if p == path else []  # type: ignore[attr-defined]
    schedules = read_schedules(settings_with(path), NOW)
    assert schedules is not None
    assert [(e.name, e.cron, e.next_run) for e in schedules.entries] == [
        ("nightly", "0 2 * * *", NOW + timedelta(hours=1))
    ]
    # next_run as a function of the module, for entries without the method
    schedule_module.load_schedule_file = lambda p: [types.SimpleNamespace(name="weekly", cron="0 0 * * 0")]  # type: ignore[attr-defined]
    schedule_module.next_run = lambda entry, after: None  # type: ignore[attr-defined]
    schedules = read_schedules(settings_with(path), NOW)
    assert schedules is not None
    assert [(e.name, e.next_run) for e in schedules.entries] == [("weekly", None)]


def test_a_schedule_that_cannot_be_read_says_why(tmp_path: Path, schedule_module: types.ModuleType) -> None:
    def broken(path: Path) -> list[Entry]:
        raise ValueError("line 3: bad cron")

    schedule_module.load_schedule_file = broken  # type: ignore[attr-defined]
    schedules = read_schedules(settings_with(tmp_path / "s.json"), NOW)
    assert schedules is not None
    assert schedules.entries == []
    assert schedules.error == "ValueError: line 3: bad cron"


async def test_the_batches_page_shows_scheduled_batches(
    tmp_path: Path, schedule_module: types.ModuleType, embedded_settings: Settings
) -> None:
    schedule_module.load_schedule_file = lambda p: [Entry("<b>nightly</b>", "0 2 * * *")]  # type: ignore[attr-defined]
    settings = embedded_settings.model_copy(update={"schedule_file": tmp_path / "s.json"})
    async with ProjectOrchestrator(settings) as orch, asgi_client(orch) as client:
        html = (await client.get("/")).text
    assert "<h2>Scheduled batches</h2>" in html
    assert "<td>&lt;b&gt;nightly&lt;/b&gt;</td><td><code>0 2 * * *</code></td>" in html
