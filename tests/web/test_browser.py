"""The dashboard in a real browser (Debian's Chromium through Playwright), served by uvicorn on this
loop, on the suite's redis-server, with real worker processes.

Gated tasks (``tests.web.agents``) end when the test opens their gate, so a test decides when each
count moves; nothing here sleeps. A page's ``window.__marker`` and its single navigation entry show
that it changed without being reloaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio
from playwright.async_api import BrowserContext, Dialog, Page, expect
from pydantic import SecretStr

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings
from tests.web.agents import GATE_PREFIX
from tests.web.conftest import Serve

pytestmark = pytest.mark.timeout(90)
expect.set_options(timeout=20_000)

XSS = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>")
TOKEN = "browser-test-token-0123456789abcdef"
StartWorkers = Callable[..., Any]


@pytest.fixture
def agent_env(agents_file: Path) -> dict[str, str]:
    return {"CODITECT_AGENTS_FILE": str(agents_file)}


@pytest.fixture
def settings(real_settings: Settings, agents_file: Path) -> Settings:
    return real_settings.model_copy(update={"agents_file": agents_file})


@pytest.fixture
async def orch(settings: Settings) -> AsyncIterator[ProjectOrchestrator]:
    async with ProjectOrchestrator(settings) as orch:
        yield orch


@pytest.fixture
async def gates(redis_url: str) -> AsyncIterator[Callable[[str], Any]]:
    async with redis.asyncio.Redis.from_url(redis_url) as client:

        async def open_gate(task_id: str) -> None:
            await client.lpush(GATE_PREFIX + task_id, 1)

        yield open_gate


async def open_page(browser: BrowserContext) -> tuple[Page, list[str]]:
    """A new tab, and the messages of any dialog (alert, confirm) it opens: there should be none."""
    page = await browser.new_page()
    dialogs: list[str] = []

    async def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", dismiss)
    return page, dialogs


async def mark(page: Page) -> None:
    """Mark the loaded document, and wait until its live stream is connected."""
    await page.evaluate("window.__marker = 'not reloaded'")
    await expect(page.locator("body")).to_have_attribute("data-live", "open")


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate("window.__marker") == "not reloaded"
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1


def cell(page: Page, task_id: str, field: str) -> Any:
    return page.locator(f'#tasks tr[data-task="{task_id}"] [data-field="{field}"]')


async def test_counts_rows_and_graph_change_live_without_a_reload(
    browser: BrowserContext, serve: Serve, orch: ProjectOrchestrator, start_workers: StartWorkers,
    agent_env: dict[str, str], gates: Callable[[str], Any],
) -> None:  # fmt: skip
    await start_workers(1, **agent_env)
    served = await serve(orch)
    tasks = [
        AgentTask(id="g0", title="first", agent="gated"),
        AgentTask(id="g1", title="second", agent="gated"),
        AgentTask(id="g2", title="third", agent="gated"),
        AgentTask(id="g3", title="after the first", agent="gated", depends_on=["g0"]),
        AgentTask(id="g4", title="last", agent="gated", depends_on=["g3"]),
    ]
    await orch.submit(tasks, batch_id="b-live", name="live counts")
    page, dialogs = await open_page(browser)
    listing, _ = await open_page(browser)
    await listing.goto(served.url)
    await expect(listing.locator('tr[data-batch="b-live"] [data-field="done"]')).to_have_text("0/5")
    await mark(listing)
    await page.goto(served.url + "batches/b-live")
    await expect(page.locator("#done-count")).to_have_text("0/5 done")
    await expect(page.locator('#graph [data-node="g4"]')).to_have_attribute("class", "node status-pending")
    await mark(page)

    for done, task_id in enumerate(["g0", "g1", "g2", "g3", "g4"], start=1):
        await gates(task_id)
        await expect(page.locator("#done-count")).to_have_text(f"{done}/5 done")
        await expect(cell(page, task_id, "status")).to_have_text("success")

    await expect(page.locator('#counts [data-count="success"]')).to_have_text("5")
    await expect(page.locator('#counts [data-count="running"]')).to_have_text("0")
    await expect(page.locator('[data-summary="state"]')).to_have_text("finished")
    await expect(page.locator('#graph [data-node="g4"]')).to_have_attribute("class", "node status-success")
    await expect(cell(page, "g4", "duration")).to_have_text(re.compile(r"^\d+\.\d\d s$"))
    await expect(cell(page, "g4", "worker")).to_have_text(re.compile(r":\d+$"))
    await expect(cell(page, "g4", "attempts")).to_have_text("1")
    await expect(page.locator("#cancel-batch")).to_be_hidden()
    await expect(listing.locator('tr[data-batch="b-live"] [data-field="done"]')).to_have_text("5/5")
    await expect(listing.locator('tr[data-batch="b-live"] [data-field="state"]')).to_have_text("finished")
    await expect(listing.locator('tr[data-batch="b-live"] .chip.count-success')).to_have_text("5 success")
    await expect(listing.locator('tr[data-batch="b-live"] .chip.count-running')).to_be_hidden()
    await assert_not_reloaded(page)
    await assert_not_reloaded(listing)
    assert dialogs == []


async def test_a_task_page_shows_its_output_and_events_as_they_come(
    browser: BrowserContext, serve: Serve, orch: ProjectOrchestrator, start_workers: StartWorkers,
    agent_env: dict[str, str], gates: Callable[[str], Any],
) -> None:  # fmt: skip
    await start_workers(1, **agent_env)
    served = await serve(orch)
    task = AgentTask(id="solo", title="A task with an output", description="Say something.", agent="gated")
    await orch.submit([task], batch_id="b-task")
    page, dialogs = await open_page(browser)
    await page.goto(served.url + "batches/b-task/tasks/solo")
    await expect(page.locator("#task-title")).to_have_text("A task with an output")
    await expect(page.locator("#prompt")).to_have_text("Say something.")
    await expect(page.locator("#output")).to_have_count(0)
    await mark(page)
    await gates("solo")
    await expect(page.locator("#task-status")).to_have_text("success")
    await expect(page.locator("#output")).to_have_text("through the gate: A task with an output")
    await expect(page.locator("#timeline li .type")).to_have_text(
        ["task.queued", "task.started", "task.succeeded"]
    )
    await expect(page.locator("#timeline li").last).to_contain_text("attempt 1 · on ")
    await assert_not_reloaded(page)
    assert dialogs == []


async def test_cancelling_a_batch_from_the_page_ends_its_tasks_cancelled(
    browser: BrowserContext, serve: Serve, orch: ProjectOrchestrator, start_workers: StartWorkers,
    agent_env: dict[str, str],
) -> None:  # fmt: skip
    await start_workers(1, CODITECT_MAX_JOBS="2", **agent_env)
    served = await serve(orch)
    await orch.submit(
        [AgentTask(id=f"c{i}", title=f"never ends {i}", agent="gated") for i in range(4)], batch_id="b-stop"
    )
    page, dialogs = await open_page(browser)
    await page.goto(served.url + "batches/b-stop")
    await expect(page.locator('#counts [data-count="running"]')).to_have_text("2")
    await page.locator("#cancel-batch").click()
    await expect(page.locator(".notice")).to_contain_text("Cancel requested")
    await expect(page.locator("#done-count")).to_have_text("4/4 done")
    await expect(page.locator('#counts [data-count="cancelled"]')).to_have_text("4")
    for i in range(4):
        await expect(cell(page, f"c{i}", "status")).to_have_text("cancelled")
    await expect(page.locator('[data-summary="state"]')).to_have_text("cancelled")
    await expect(page.locator("#cancel-batch")).to_be_hidden()
    await expect(page.locator("#rerun-batch")).to_be_visible()
    results = await orch.results("b-stop")
    assert {result.status for result in results} == {ExecutionStatus.CANCELLED}
    assert dialogs == []


async def test_rerunning_from_the_page_goes_to_the_new_batch(
    browser: BrowserContext, serve: Serve, orch: ProjectOrchestrator, start_workers: StartWorkers,
    agent_env: dict[str, str],
) -> None:  # fmt: skip
    await start_workers(1, **agent_env)
    served = await serve(orch)
    tasks = [
        AgentTask(id="ok", title="fine", agent="writer"),
        AgentTask(id="bad", title="breaks", agent="failing"),
        AgentTask(id="after", title="waits for bad", agent="writer", depends_on=["bad"]),
    ]
    await orch.run_batch(tasks, batch_id="b-old", name="flaky", timeout_s=30)
    page, _ = await open_page(browser)
    await page.goto(served.url + "batches/b-old")
    await page.locator("#rerun-batch").click()
    await expect(page.locator("h1")).to_have_text("flaky (re-run)")
    await expect(page.locator(".notice")).to_contain_text("re-runs the tasks that did not succeed")
    await expect(page.get_by_role("link", name="b-old", exact=True)).to_be_visible()
    await expect(page.locator("#done-count")).to_have_text("2/2 done")
    await expect(page.locator("#tasks tr[data-task]")).to_have_count(2)
    await expect(cell(page, "bad", "status")).to_have_text("failed")
    await expect(cell(page, "after", "status")).to_have_text("cancelled")
    assert "/batches/b-old" not in page.url


async def test_task_text_stays_text_in_pages_and_in_live_rows(
    browser: BrowserContext, serve: Serve, orch: ProjectOrchestrator, start_workers: StartWorkers,
    agent_env: dict[str, str], gates: Callable[[str], Any],
) -> None:  # fmt: skip
    await start_workers(1, **agent_env)
    served = await serve(orch)
    tasks = [
        AgentTask(id="x1", title=XSS[0], description=XSS[1], agent="gated-planner"),
        AgentTask(id="x2", title=XSS[1], agent="writer"),
    ]
    await orch.submit(tasks, batch_id="b-xss", name=XSS[1])
    page, dialogs = await open_page(browser)
    await page.goto(served.url)
    await expect(page.locator('tr[data-batch="b-xss"] [data-field="name"]')).to_have_text(XSS[1])
    await page.goto(served.url + "batches/b-xss")
    await expect(cell(page, "x1", "title")).to_have_text(XSS[0])
    await expect(cell(page, "x2", "title")).to_have_text(XSS[1])
    await expect(page.locator("h1")).to_have_text(XSS[1])
    await mark(page)
    await gates("x1")  # the planner now delegates two children titled after it: rows the script adds
    await expect(cell(page, "x1.1", "title")).to_have_text(XSS[0] + " (part 1)")
    await expect(cell(page, "x1.2", "title")).to_have_text(XSS[0] + " (part 2)")
    await expect(page.locator("#done-count")).to_have_text("4/4 done")
    listed = await page.locator("#tasks tr[data-task]").evaluate_all("rows => rows.map(r => r.dataset.task)")
    assert listed == ["x1", "x1.1", "x1.2", "x2"]
    assert await page.locator("main img, main script").count() == 0
    await assert_not_reloaded(page)
    await page.goto(served.url + "batches/b-xss/tasks/x1")
    await expect(page.locator("#task-title")).to_have_text(XSS[0])
    await expect(page.locator("#prompt")).to_have_text(XSS[1])
    assert await page.locator("main img, main script").count() == 0
    assert dialogs == []


async def test_with_a_token_the_browser_must_log_in_and_the_stream_is_closed_without_it(
    browser: BrowserContext, serve: Serve, settings: Settings, start_workers: StartWorkers,
    agent_env: dict[str, str],
) -> None:  # fmt: skip
    await start_workers(1, **agent_env)
    with_token = settings.model_copy(update={"dashboard_token": SecretStr(TOKEN)})
    async with ProjectOrchestrator(with_token) as orch:
        served = await serve(orch)
        await orch.run_batch([AgentTask(id="t", title="secret work", agent="writer")], batch_id="b-tok")
        page, _ = await open_page(browser)
        response = await page.goto(served.url + "batches/b-tok")
        assert response is not None
        assert response.status == 401
        await expect(page.locator("h1")).to_have_text("Log in")
        await expect(page.get_by_text("secret work")).to_have_count(0)
        await page.locator("input[name=token]").fill("not-the-token-at-all-no")
        await page.locator("form.login button").click()
        await expect(page.locator(".error")).to_have_text("That is not the token.")
        await page.locator("input[name=token]").fill(TOKEN)
        await page.locator("form.login button").click()
        await expect(page).to_have_url(served.url + "batches/b-tok")
        await expect(cell(page, "t", "title")).to_have_text("secret work")
        await expect(page.locator("body")).to_have_attribute(
            "data-live", "open"
        )  # the stream, with the cookie
        (cookie,) = await browser.cookies()
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
        assert TOKEN not in json.dumps(cookie)
        async with httpx.AsyncClient() as http:
            for path in ("batches/b-tok/live?since=0-0", "live", "batches/b-tok", "workers"):
                assert (await http.get(served.url + path)).status_code == 401, path
            bearer = await http.get(
                served.url + "batches/b-tok", headers={"authorization": f"Bearer {TOKEN}"}
            )
            assert bearer.status_code == 200


async def test_a_cross_site_form_cannot_cancel_a_batch(
    browser: BrowserContext, serve: Serve, orch: ProjectOrchestrator, start_workers: StartWorkers,
    agent_env: dict[str, str],
) -> None:  # fmt: skip
    await start_workers(1, **agent_env)
    served = await serve(orch)
    await orch.submit([AgentTask(id="v", title="victim", agent="gated")], batch_id="b-victim")
    page, _ = await open_page(browser)
    await page.goto(served.url + "batches/b-victim")  # the browser has a dashboard session
    await expect(page.locator("#cancel-batch")).to_be_visible()
    attack = (
        f'<form id="f" method="post" action="{served.url}batches/b-victim/cancel">'
        '<input name="csrf" value="guessed"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )

    async def evil_site(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/html", body=attack)

    await page.route("http://evil.test/", evil_site)
    async with page.expect_response(lambda response: response.url.endswith("/cancel")) as posted:
        await page.goto("http://evil.test/")
    response = await posted.value
    assert response.status == 403
    assert response.request.headers.get("origin") == "http://evil.test"
    summary = await orch.summary("b-victim")
    assert summary.cancelled is None
    assert summary.counts["cancelled"] == 0
    await orch.cancel("b-victim")


async def test_the_workers_page_shows_workers_queue_limits_and_the_last_hour(
    browser: BrowserContext, serve: Serve, settings: Settings, start_workers: StartWorkers,
    agent_env: dict[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    workers = await start_workers(2, **agent_env)
    limits = tmp_path / "limits.json"
    limits.write_text(json.dumps({"limits": [{"provider": "offline", "requests_per_minute": 100}]}))
    async with ProjectOrchestrator(settings.model_copy(update={"limits_file": limits})) as orch:
        served = await serve(orch)
        await orch.run_batch([AgentTask(id=f"w{i}", title=f"work {i}", agent="writer") for i in range(3)])
        page, _ = await open_page(browser)
        await page.goto(served.url + "workers")
        await expect(page.locator("#worker-count")).to_have_text("2 alive")
        names = await page.locator("#workers tbody tr td:first-child").all_text_contents()
        assert sorted(int(name.rpartition(":")[2]) for name in names) == sorted(w.pid for w in workers)
        await expect(page.locator("#queue-total")).to_have_text("0")
        await expect(page.locator("#limits tbody tr")).to_have_text(
            ["offline all models 3 / 100 - - -"], use_inner_text=True
        )
        await expect(page.locator("#finished-last-hour")).to_have_text("3 tasks finished")
        assert await page.locator("svg rect.bar-succeeded").count() == 1
        await page.evaluate("window.__marker = 'not reloaded'")
        await orch.run_batch([AgentTask(id=f"v{i}", title=f"more {i}", agent="writer") for i in range(2)])
        await expect(page.locator("#finished-last-hour")).to_have_text("5 tasks finished")  # refreshes itself
        await expect(page.locator("#limits tbody tr td").nth(2)).to_have_text("5 / 100")
        await assert_not_reloaded(page)
