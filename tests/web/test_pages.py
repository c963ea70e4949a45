"""The dashboard's pages, rendered by the app on the embedded backend (fakeredis, in-process workers)."""

from __future__ import annotations

import re

import httpx
import pytest

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionStatus
from coditect.web.reads import read_state
from coditect.web.task_rows import MAX_ROWS

XSS_TITLES = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>")


def main_text(html: str) -> str:
    return html.partition('<main id="main">')[2].partition("</main>")[0]


async def run(orch: ProjectOrchestrator, tasks: list[AgentTask], batch_id: str, name: str = "") -> None:
    await orch.run_batch(tasks, batch_id=batch_id, name=name, timeout_s=30)


async def test_the_batches_page_lists_recent_batches_with_counts_tokens_and_cost(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    await run(embedded, [AgentTask(id="a", title="one"), AgentTask(id="b", title="two")], "b-one", "first")
    await run(embedded, [AgentTask(id="f", title="boom", agent="failing")], "b-two", "second")
    response = await client.get("/")
    assert response.status_code == 200
    html = main_text(response.text)
    assert html.index('data-batch="b-two"') < html.index('data-batch="b-one"')  # newest first
    row = html.partition('data-batch="b-one"')[2].partition("</tr>")[0]
    assert '<td data-field="name">first</td>' in row
    assert '<td data-field="done">2/2</td>' in row
    assert '<span class="chip count-success"><b data-count="success">2</b> success</span>' in row
    assert '<span class="chip count-failed" hidden><b data-count="failed">0</b> failed</span>' in row
    assert re.search(r'data-field="tokens">\d+<', row)
    failed = html.partition('data-batch="b-two"')[2].partition("</tr>")[0]
    assert '<span class="chip count-failed"><b data-count="failed">1</b> failed</span>' in failed
    assert 'data-live="/live"' in html
    assert "Scheduled batches" not in html  # no schedule file


async def test_a_batch_page_shows_its_tasks_graph_and_totals(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    tasks = [
        AgentTask(id="plan", title="Plan the work", agent="writer"),
        AgentTask(id="build", title="Build it", agent="coder", depends_on=["plan"]),
        AgentTask(id="check", title="Check it", agent="failing", depends_on=["build"]),
        AgentTask(id="ship", title="Ship it", depends_on=["check"]),
    ]
    await run(embedded, tasks, "b-graph", "graph")
    html = main_text((await client.get("/batches/b-graph")).text)
    assert '<dd id="done-count" data-summary="progress">4/4 done</dd>' in html
    row = html.partition('<tr data-task="build"')[2].partition("</tr>")[0]
    assert 'data-field="status">success<' in row
    assert 'data-field="agent">coder<' in row
    assert 'data-field="model">offline-1<' in row
    assert 'data-field="attempts">1<' in row
    assert re.search(r'data-field="tokens">\d+ \+ \d+<', row)
    assert 'data-field="status">failed<' in html.partition('<tr data-task="check"')[2].partition("</tr>")[0]
    assert 'data-field="status">cancelled<' in html.partition('<tr data-task="ship"')[2].partition("</tr>")[0]
    # One column per depth, an edge per dependency, each node coloured by its status.
    assert html.count('<g class="node') == 4
    assert html.count("<path d=") == 3
    assert 'class="node status-failed" data-node="check" transform="translate(440 8)"' in html
    # Finished with failures: no cancel, a re-run.
    assert re.search(
        r'<form method="post" action="/batches/b-graph/cancel" data-show="running" hidden>', html
    )
    assert re.search(r'<form method="post" action="/batches/b-graph/rerun" data-show="rerunnable">', html)
    assert "model</td><td>offline-1</td>" in html


async def test_a_batch_page_filters_by_status_and_searches_ids_and_titles(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    tasks = [
        AgentTask(id="alpha", title="Write the intro"),
        AgentTask(id="beta", title="Write the outro"),
        AgentTask(id="gamma", title="Fail loudly", agent="failing"),
    ]
    await run(embedded, tasks, "b-filter")

    async def listed(query: str) -> list[str]:
        html = (await client.get("/batches/b-filter" + query)).text
        return re.findall(r'<tr data-task="([^"]+)"', html)

    assert await listed("") == ["alpha", "beta", "gamma"]
    assert await listed("?status=failed") == ["gamma"]
    assert await listed("?status=success") == ["alpha", "beta"]
    assert await listed("?q=OUTRO") == ["beta"]
    assert await listed("?q=alp") == ["alpha"]
    assert await listed("?status=success&q=gamma") == []
    assert await listed("?status=nonsense") == ["alpha", "beta", "gamma"]  # an unknown status filters nothing
    assert "1 of 3 tasks" in (await client.get("/batches/b-filter?status=failed")).text


async def test_delegated_children_are_listed_under_their_parent(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    tasks = [
        AgentTask(id="first", title="before"),
        AgentTask(id="boss", title="plans", agent="planner"),
        AgentTask(id="last", title="after"),
    ]
    await run(embedded, tasks, "b-tree")
    html = (await client.get("/batches/b-tree")).text
    order = re.findall(r'<tr data-task="([^"]+)" data-depth="(\d)" class="depth-(\d)"', html)
    assert order == [
        ("first", "0", "0"),
        ("boss", "0", "0"),
        ("boss.1", "1", "1"),
        ("boss.2", "1", "1"),
        ("last", "0", "0"),
    ]
    # Children are not nodes of the dependency graph (no task depends on another here: none is drawn).
    assert "No task of this batch depends on another." in html
    task = (await client.get("/batches/b-tree/tasks/boss.1")).text
    assert 'Delegated by</dt><dd><a href="/batches/b-tree/tasks/boss">boss</a> (depth 1)' in task
    parent = (await client.get("/batches/b-tree/tasks/boss")).text
    assert '<a href="/batches/b-tree/tasks/boss.1">boss.1</a>' in parent


async def test_a_task_page_shows_its_output_error_attempts_and_timeline(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    tasks = [
        AgentTask(id="ok", title="Say hello", description="Be brief.", agent="writer"),
        AgentTask(id="bad", title="Break", agent="failing"),
    ]
    await run(embedded, tasks, "b-task")
    html = main_text((await client.get("/batches/b-task/tasks/ok")).text)
    assert '<h1 id="task-title">Say hello</h1>' in html
    assert '<pre class="text" id="prompt">Be brief.</pre>' in html
    assert re.search(r'<pre class="text" id="output">\[offline offline-1 #[0-9a-f]+\] Say hello</pre>', html)
    assert "<dt>Attempts</dt><dd>1</dd>" in html
    timeline = re.findall(
        r'<li class="ev-(\w+)"><time>[\d:.]+</time> <span class="type">([\w.]+)</span>', html
    )
    assert timeline == [("queued", "task.queued"), ("running", "task.started"), ("success", "task.succeeded")]
    assert re.search(r"attempt 1 · on [^<]+ · 0\.\d+ s · \d+ \+ \d+ tokens", html)
    bad = main_text((await client.get("/batches/b-task/tasks/bad")).text)
    assert '<pre class="text error" id="error">unexpected RuntimeError: failed on purpose: Break</pre>' in bad
    assert '<span class="type">task.failed</span>' in bad


async def test_task_text_is_escaped_everywhere(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    tasks = [
        AgentTask(id="s1", title=XSS_TITLES[0], description=XSS_TITLES[1]),
        AgentTask(id="s2", title=XSS_TITLES[1], depends_on=["s1"]),
    ]
    await run(embedded, tasks, "b-xss", name=XSS_TITLES[0])
    pages = [await client.get(path) for path in ("/", "/batches/b-xss", "/batches/b-xss/tasks/s1")]
    for page in pages:
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1].text
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[1].text
    assert "&lt;img src=x onerror=alert(1)&gt;</pre>" in pages[2].text  # the prompt
    assert pages[2].text.count("<script") == 1  # the page's own script tag only


async def test_unknown_and_malformed_ids_are_404(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    await run(embedded, [AgentTask(id="t", title="x")], "b-known")
    for path in (
        "/batches/b-unknown",
        "/batches/b-known/tasks/nope",
        "/batches/bad%20id",
        "/batches/b-known/tasks/bad%3Cid%3E",
        "/batches/b-unknown/live",
        "/no/such/page",
    ):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert "<script>" not in response.text


async def test_the_workers_page_shows_workers_queue_and_the_last_hour(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    await run(embedded, [AgentTask(id=f"t{i}", title=f"task {i}") for i in range(3)], "b-work")
    html = main_text((await client.get("/workers")).text)
    assert '<small id="worker-count">1 alive</small>' in html  # the embedded worker
    assert re.search(r"<td>[^<]+</td><td>coditect:queue</td>", html)
    assert '<dd id="queue-total">0</dd>' in html
    assert '<small id="finished-last-hour">3 tasks finished</small>' in html
    assert html.count('class="bar bar-succeeded"') == 1  # one minute with three tasks
    assert "No rate limits are configured" in html


async def test_a_long_batch_lists_at_most_max_rows(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    tasks = [AgentTask(id=f"t{i:04d}", title=f"task {i}") for i in range(MAX_ROWS + 5)]
    await embedded.submit(tasks, batch_id="b-long")
    html = (await client.get("/batches/b-long")).text
    assert html.count("<tr data-task=") == MAX_ROWS
    assert f"{MAX_ROWS + 5} of {MAX_ROWS + 5} tasks; the first {MAX_ROWS} are shown" in html
    await embedded.wait("b-long", timeout_s=60)


async def test_a_task_without_a_result_shows_its_state(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    slow = AgentTask(id="wait", title="waits", agent="sleeper", metadata={"seconds": 60})
    await embedded.submit([slow], batch_id="b-wait")
    html = (await client.get("/batches/b-wait/tasks/wait")).text
    state = await read_state(embedded.redis, "b-wait", "wait")
    assert state in {ExecutionStatus.QUEUED.value, ExecutionStatus.RUNNING.value}
    assert "No result yet" in html
    await embedded.cancel("b-wait")
    await embedded.wait("b-wait", timeout_s=20)
    assert (await read_state(embedded.redis, "b-wait", "wait")) == "cancelled"


@pytest.mark.parametrize("path", ["/static/dashboard.js", "/static/dashboard.css", "/static/favicon.svg"])
async def test_static_files_are_served_with_their_types(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
        "text/css",
        "image/svg+xml",
    }
    assert response.headers["x-content-type-options"] == "nosniff"
