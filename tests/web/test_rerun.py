"""Re-running what did not succeed, as a new batch, from the batch page's form."""

from __future__ import annotations

import re

import httpx

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionStatus
from coditect.web.rerun import rerun_failed
from tests.web.conftest import ORIGIN


def form_fields(html: str, action: str) -> dict[str, str]:
    form = html.partition(f'action="{action}"')[2].partition("</form>")[0]
    return dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form))


async def test_the_rerun_form_submits_the_unsuccessful_tasks_as_a_new_batch(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    tasks = [
        AgentTask(id="ok", title="fine"),
        AgentTask(id="bad", title="breaks", agent="failing", depends_on=["ok"]),
        AgentTask(id="after", title="never runs", depends_on=["bad", "ok"]),
        AgentTask(id="boss", title="plans", agent="planner"),
    ]
    await embedded.run_batch(tasks, batch_id="b-first", name="nightly", timeout_s=30)
    page = (await client.get("/batches/b-first")).text
    fields = form_fields(page, "/batches/b-first/rerun")
    assert set(fields) == {"csrf", "new_batch_id"}
    response = await client.post("/batches/b-first/rerun", data=fields, headers={"origin": ORIGIN})
    assert response.status_code == 303
    new_id = fields["new_batch_id"]
    assert response.headers["location"] == f"/batches/{new_id}?notice=rerun"
    again = await client.post("/batches/b-first/rerun", data=fields, headers={"origin": ORIGIN})
    assert again.headers["location"] == response.headers["location"]  # sent twice: one batch
    rerun = await embedded.store.tasks(new_id)
    assert sorted(rerun) == ["after", "bad"]  # not "ok", nor "boss" (succeeded) or its children
    assert rerun["after"].depends_on == ["bad"]  # "ok" succeeded: not waited for again
    assert rerun["bad"].depends_on == []
    results = await embedded.wait(new_id, timeout_s=30)
    assert [(r.task_id, r.status) for r in results] == [
        ("bad", ExecutionStatus.FAILED), ("after", ExecutionStatus.CANCELLED),
    ]  # fmt: skip
    summary = await embedded.summary(new_id)
    assert summary.name == "nightly (re-run)"
    assert summary.fields["rerun_of"] == "b-first"
    new_page = (await client.get(response.headers["location"])).text
    assert 'Re-run of <a href="/batches/b-first">b-first</a>' in new_page
    assert "This batch re-runs the tasks that did not succeed." in new_page


async def test_nothing_to_rerun_goes_back_with_a_notice(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    await embedded.run_batch([AgentTask(id="ok", title="fine")], batch_id="b-fine", timeout_s=30)
    page = (await client.get("/batches/b-fine")).text
    assert '<form method="post" action="/batches/b-fine/rerun" data-show="rerunnable" hidden>' in page
    fields = form_fields(page, "/batches/b-fine/rerun")
    response = await client.post("/batches/b-fine/rerun", data=fields, headers={"origin": ORIGIN})
    assert response.headers["location"] == "/batches/b-fine?notice=nothing-to-rerun"
    assert not await embedded.store.exists(fields["new_batch_id"])
    assert await rerun_failed(embedded.store, "b-unknown", "b-other") == 0


async def test_a_rerun_with_a_bad_or_same_id_or_of_an_unknown_batch(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    await embedded.run_batch([AgentTask(id="x", title="x", agent="failing")], batch_id="b-fail", timeout_s=30)
    fields = form_fields((await client.get("/batches/b-fail")).text, "/batches/b-fail/rerun")
    same = await client.post(
        "/batches/b-fail/rerun", data={**fields, "new_batch_id": "b-fail"}, headers={"origin": ORIGIN}
    )
    assert same.status_code == 400
    bad = await client.post(
        "/batches/b-fail/rerun", data={**fields, "new_batch_id": "no spaces!"}, headers={"origin": ORIGIN}
    )
    assert bad.status_code == 303  # a fresh id instead
    assert re.fullmatch(r"/batches/b-[0-9a-f]{12}\?notice=rerun", bad.headers["location"])
    unknown = await client.post("/batches/b-nope/rerun", data=fields, headers={"origin": ORIGIN})
    assert unknown.status_code == 404
    cancel_unknown = await client.post("/batches/b-nope/cancel", data=fields, headers={"origin": ORIGIN})
    assert cancel_unknown.status_code == 404
