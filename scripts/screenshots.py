"""Screenshots of the dashboard's pages for the README (``scripts/screenshots``; about 15 s).

Starts its own redis-server on a free port and two worker processes, runs a few batches (one with
dependencies, a delegating planner, a failure and the task it cancels, two tasks still running),
serves the dashboard and saves each page from Debian's Chromium into ``docs/screenshots/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coditect.client.orchestrator import ProjectOrchestrator  # noqa: E402
from coditect.models import AgentTask  # noqa: E402
from coditect.settings import Settings  # noqa: E402
from coditect.web import Dashboard, DashboardServer  # noqa: E402
from tests.support.browser import chromium_missing, launch_chromium  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.workers import WorkerProcess  # noqa: E402
from tests.web.agents import GATE_PREFIX  # noqa: E402

AGENTS = {
    "agents": [
        {"name": "gated", "mode": "python", "entrypoint": "tests.web.agents:gated"},
        {"name": "planner", "mode": "python", "entrypoint": "tests.support.python_agents:planner"},
        {"name": "failing", "mode": "python", "entrypoint": "tests.web.agents:failing"},
    ]
}
LIMITS = {"limits": [{"provider": "offline", "requests_per_minute": 60, "output_tokens_per_minute": 2000}]}

RELEASE = [
    AgentTask(id="notes", title="Collect the merged pull requests", agent="researcher"),
    AgentTask(id="draft", title="Draft the release notes", agent="writer", depends_on=["notes"]),
    AgentTask(id="migrate", title="Write the migration guide", agent="writer", depends_on=["notes"]),
    AgentTask(
        id="review", title="Review the notes and the guide", agent="reviewer", depends_on=["draft", "migrate"]
    ),
    AgentTask(id="plan", title="Plan the announcement", agent="planner", depends_on=["notes"]),
    AgentTask(id="bench", title="Compare throughput with the last release", agent="failing"),
    AgentTask(id="chart", title="Chart the benchmark figures", agent="coder", depends_on=["bench"]),
    AgentTask(id="publish", title="Publish to the docs site", agent="gated", depends_on=["review"]),
    AgentTask(id="tweet", title="Write the social media posts", agent="gated", depends_on=["plan"]),
]
NIGHTLY = [
    AgentTask(id=f"report-{n}", title=f"Summarise the logs of service {n}", agent="writer") for n in range(8)
]


async def take(out: Path) -> None:
    missing = chromium_missing()
    if missing is not None:
        raise SystemExit(missing)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "agents.json").write_text(json.dumps(AGENTS))
        (work / "limits.json").write_text(json.dumps(LIMITS))
        redis_server = RedisServer(work / "redis")
        redis_server.start()
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("CODITECT_", "ANTHROPIC_", "OPENAI_"))
            },
            "CODITECT_REDIS_URL": redis_server.url,
            "CODITECT_AGENTS_FILE": str(work / "agents.json"),
            "CODITECT_OFFLINE_LATENCY_S": "0.4",
            "PYTHONPATH": str(ROOT),
        }
        workers = [WorkerProcess(env) for _ in range(2)]
        try:
            for worker in workers:
                await worker.start()
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                redis_url=redis_server.url,
                agents_file=work / "agents.json",
                limits_file=work / "limits.json",
            )
            async with ProjectOrchestrator(settings) as orch:
                await orch.run_batch(NIGHTLY, batch_id="b-3f1c9a7e2d10", name="nightly-logs")
                await orch.run_batch(NIGHTLY[:3], batch_id="b-77d2e0c4aa51", name="ad-hoc")
                await orch.submit(RELEASE, batch_id="b-5e0c2d9e1a7b", name="release-2.4")
                await _settled(orch, "b-5e0c2d9e1a7b")
                server = DashboardServer(Dashboard.create(orch), "127.0.0.1", 0)
                url = await server.start()
                try:
                    await _shoot(url, out, work / "chromium")
                finally:
                    await server.stop()
                    for task in ("publish", "tweet"):
                        await orch.redis.lpush(GATE_PREFIX + task, 1)  # type: ignore[misc]
                    await orch.wait("b-5e0c2d9e1a7b", timeout_s=60)
        finally:
            for worker in workers:
                await worker.stop()
            redis_server.stop()


async def _settled(orch: ProjectOrchestrator, batch_id: str) -> None:
    """Until every task has ended but the two gated ones, which are running."""
    started: set[str | None] = set()
    ended: set[str | None] = set()
    async with asyncio.timeout(60):
        async for event in orch.events(batch_id):
            if event.type == "task.started":
                started.add(event.task_id)
            elif event.is_final:
                ended.add(event.task_id)
            if len(ended) == 9 and {"publish", "tweet"} <= started:
                return


async def _shoot(url: str, out: Path, profile: Path) -> None:
    pages = {
        "batches.png": url,
        "batch.png": url + "batches/b-5e0c2d9e1a7b",
        "task.png": url + "batches/b-5e0c2d9e1a7b/tasks/bench",
        "workers.png": url + "workers",
    }
    async with async_playwright() as playwright:
        context = await launch_chromium(playwright, profile)
        try:
            page = await context.new_page()
            for name, address in pages.items():
                await page.goto(address)
                await page.wait_for_selector("body[data-live='open'], #capacity")
                await page.screenshot(path=str(out / name), full_page=True)
                print(f"wrote {out / name}")
        finally:
            await context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="where to save them")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(take(out))


if __name__ == "__main__":
    main()
