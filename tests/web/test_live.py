"""Live updates: Server-Sent Events from a real dashboard server (uvicorn on this loop) on the embedded
backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask
from tests.web.agents import local_gate
from tests.web.conftest import Serve
from tests.web.sse import EventStream, Message

DEADLINE_S = 20


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        yield client


async def collect_until_finished(stream: EventStream) -> list[Message]:
    found = []
    async with asyncio.timeout(DEADLINE_S):
        async for message in stream.messages():
            found.append(message)
            if message.event == "summary" and message.data["finished"]:
                return found
    raise AssertionError(f"the stream ended before the batch finished: {found}")


async def test_a_batch_stream_sends_each_task_change_and_the_counts(
    embedded: ProjectOrchestrator, serve: Serve, http: httpx.AsyncClient
) -> None:
    served = await serve(embedded)
    tasks = [AgentTask(id="a", title="first"), AgentTask(id="b", title="second", depends_on=["a"])]
    await embedded.run_batch(tasks, batch_id="b-live", timeout_s=DEADLINE_S)
    async with http.stream("GET", served.url + "batches/b-live/live?since=0-0") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        found = await collect_until_finished(EventStream(response))
    updates = [(m.data["task_id"], m.data["status"]) for m in found if m.event == "task"]
    assert updates == [
        ("a", "queued"), ("a", "running"), ("a", "success"),
        ("b", "queued"), ("b", "running"), ("b", "success"),
    ]  # fmt: skip
    final = next(m.data for m in found if m.event == "task" and m.data["type"] == "task.succeeded")
    assert final["model"] == "offline-1"
    assert final["duration"].endswith(" s")
    assert " + " in final["tokens"]
    assert final["detail"].startswith("attempt 1 · on ")
    summary = found[-1].data
    assert (summary["done"], summary["total"], summary["counts"]["success"]) == (2, 2, 2)
    assert summary["state"] == "finished"
    ids = [m.id for m in found if m.event == "task"]
    assert all(ids)
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in str(i).split("-")))


async def test_a_reconnecting_browser_resumes_after_its_last_event_id(
    embedded: ProjectOrchestrator, serve: Serve, http: httpx.AsyncClient
) -> None:
    served = await serve(embedded)
    await embedded.run_batch([AgentTask(id=f"t{i}", title=str(i)) for i in range(3)], batch_id="b-resume")
    url = served.url + "batches/b-resume/live"
    async with http.stream("GET", url + "?since=0-0") as response:
        every = [m for m in await collect_until_finished(EventStream(response)) if m.event == "task"]
    async with http.stream(
        "GET", url + "?since=0-0", headers={"last-event-id": str(every[3].id)}
    ) as response:
        resumed = [m for m in await collect_until_finished(EventStream(response)) if m.event == "task"]
    assert [m.id for m in resumed] == [m.id for m in every[4:]]


async def test_a_task_stream_sends_only_that_task(
    embedded: ProjectOrchestrator, serve: Serve, http: httpx.AsyncClient
) -> None:
    served = await serve(embedded)
    await embedded.run_batch([AgentTask(id="x", title="x"), AgentTask(id="y", title="y")], batch_id="b-one")
    url = served.url + "batches/b-one/live?since=0-0&task=y"
    found: list[Message] = []
    async with http.stream("GET", url) as response, asyncio.timeout(DEADLINE_S):
        async for message in EventStream(response).messages():
            found.append(message)
            if message.data.get("status") == "success":
                break
    assert {m.event for m in found} == {"task"}
    assert [m.data["type"] for m in found] == ["task.queued", "task.started", "task.succeeded"]
    assert {m.data["task_id"] for m in found} == {"y"}


async def test_delegated_children_arrive_as_new_tasks_under_their_parent(
    embedded: ProjectOrchestrator, serve: Serve, http: httpx.AsyncClient
) -> None:
    served = await serve(embedded)
    tasks = [
        AgentTask(id="gate", title="wait", agent="local-gated"),
        AgentTask(id="boss", title="plan", agent="planner", depends_on=["gate"]),
    ]
    await embedded.submit(tasks, batch_id="b-kids")
    found: list[Message] = []
    async with http.stream("GET", served.url + "batches/b-kids/live?since=0-0") as response:
        stream = EventStream(response)
        assert (await stream.first_line()).startswith("retry:")  # the stream knows the tasks so far
        local_gate("gate").set()
        found = await collect_until_finished(stream)
    new = [m.data for m in found if m.event == "newtask"]
    assert new == [
        {"task_id": "boss.1", "title": "plan: part 1", "agent": "writer", "parent": "boss", "depth": 1},
        {"task_id": "boss.2", "title": "plan: part 2", "agent": "writer", "parent": "boss", "depth": 1},
    ]
    assert found[-1].data["total"] == 4


async def test_the_all_batches_stream_sends_rows_of_new_batches(
    embedded: ProjectOrchestrator, serve: Serve, http: httpx.AsyncClient
) -> None:
    served = await serve(embedded)
    async with http.stream("GET", served.url + "live") as response:
        stream = EventStream(response)
        assert (await stream.first_line()).startswith("retry:")
        await embedded.submit([AgentTask(id="n", title="new")], batch_id="b-new", name="fresh")
        async with asyncio.timeout(DEADLINE_S):
            async for message in stream.messages():
                assert message.event == "batch"
                if message.data["finished"]:
                    break
    assert message.data["id"] == "b-new"
    assert message.data["name"] == "fresh"
    assert message.data["done"] == 1


async def test_bad_since_is_400(embedded: ProjectOrchestrator, serve: Serve, http: httpx.AsyncClient) -> None:
    served = await serve(embedded)
    await embedded.submit([AgentTask(id="n", title="new")], batch_id="b-since")
    for url in (
        "batches/b-since/live?since=yesterday",
        "live?since=1-2-3",
        "batches/b-since/live?task=%3Cx%3E",
    ):
        assert (await http.get(served.url + url)).status_code == 400, url
    await embedded.wait("b-since", timeout_s=DEADLINE_S)


async def test_stopping_the_server_ends_open_streams(
    embedded: ProjectOrchestrator, http: httpx.AsyncClient
) -> None:
    from coditect.web import Dashboard, DashboardServer

    server = DashboardServer(Dashboard.create(embedded), "127.0.0.1", 0)
    url = await server.start()
    async with http.stream("GET", url + "live") as response:
        stream = EventStream(response)
        assert (await stream.first_line()).startswith("retry:")
        stopping = asyncio.create_task(server.stop())
        async with asyncio.timeout(DEADLINE_S):
            rest = await stream.lines()
        await stopping
    assert all(not line or line.startswith(":") for line in rest)
    with pytest.raises(httpx.ConnectError):
        await http.get(url)
