"""Dashboard fixtures: the app on the embedded backend (fakeredis, in-process workers) for unit tests;
a real uvicorn server, the suite's redis-server, real worker processes and Debian's Chromium for the
browser tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import BrowserContext, async_playwright

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.settings import Settings
from coditect.web import Dashboard, DashboardServer, create_app
from tests.integration.conftest import (  # noqa: F401 (fixtures used by the browser tests)
    real_settings,
    start_workers,
    worker_env,
)
from tests.support.browser import chromium_missing, launch_chromium
from tests.web.agents import close_local_gates

ORIGIN = "http://127.0.0.1:8000"
TEST_AGENTS = {
    "agents": [
        {"name": "gated", "mode": "python", "entrypoint": "tests.web.agents:gated"},
        {"name": "gated-planner", "mode": "python", "entrypoint": "tests.web.agents:gated_planner"},
        {"name": "planner", "mode": "python", "entrypoint": "tests.support.python_agents:planner"},
        {"name": "failing", "mode": "python", "entrypoint": "tests.web.agents:failing"},
        {"name": "sleeper", "mode": "python", "entrypoint": "tests.support.python_agents:sleeper"},
        {"name": "local-gated", "mode": "python", "entrypoint": "tests.web.agents:locally_gated"},
    ]
}


@dataclass
class Served:
    url: str
    orchestrator: ProjectOrchestrator
    dashboard: Dashboard


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
def agents_file(tmp_path: Path) -> Path:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps(TEST_AGENTS), encoding="utf-8")
    return path


@pytest.fixture
def embedded_settings(agents_file: Path) -> Settings:
    return Settings(_env_file=None, agents_file=agents_file, poll_interval_s=0.01)  # type: ignore[call-arg]


@pytest.fixture
async def embedded(embedded_settings: Settings) -> AsyncIterator[ProjectOrchestrator]:
    """An open orchestrator on the embedded backend, with the test agents."""
    close_local_gates()
    async with ProjectOrchestrator(embedded_settings) as orch:
        yield orch
    close_local_gates()


def asgi_client(orch: ProjectOrchestrator, *, host: str = "127.0.0.1") -> httpx.AsyncClient:
    app = create_app(Dashboard.create(orch, host=host))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN)


@pytest.fixture
async def client(embedded: ProjectOrchestrator) -> AsyncIterator[httpx.AsyncClient]:
    """The dashboard's app on the embedded orchestrator, called in-process."""
    async with asgi_client(embedded) as client:
        yield client


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts real dashboard servers (uvicorn on this loop, a free port); all stopped afterwards."""
    servers: list[DashboardServer] = []

    async def start(orch: ProjectOrchestrator, host: str = "127.0.0.1") -> Served:
        dashboard = Dashboard.create(orch, host=host)
        server = DashboardServer(dashboard, host, 0)
        servers.append(server)
        return Served(await server.start(), orch, dashboard)

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """Debian's Chromium with a fresh profile. No skip when it is missing: the test fails, saying why."""
    missing = chromium_missing()
    if missing is not None:
        pytest.fail(missing)
    async with async_playwright() as playwright:
        context = await launch_chromium(playwright, tmp_path / "chromium-profile")
        try:
            yield context
        finally:
            await context.close()
