"""The dashboard's pages: batches, a batch, a task, workers and capacity, and the login form."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from coditect.client.orchestrator import new_batch_id
from coditect.clock import now_ms
from coditect.engine.registry import live_workers
from coditect.llm.limits import RateLimiter
from coditect.models import ExecutionStatus
from coditect.web.batch_rows import batch_row
from coditect.web.capacity import limit_use
from coditect.web.charts import bar_chart
from coditect.web.formatting import ago
from coditect.web.graph import layout
from coditect.web.live import task_update
from coditect.web.reads import newest_event_id, queue_depth, read_parents, read_state, read_task, task_events
from coditect.web.rendering import batch_id_param, dashboard_of, render, task_id_param
from coditect.web.rerun import RERUN_STATUSES
from coditect.web.schedules import read_schedules
from coditect.web.task_rows import MAX_ROWS, load_batch_tasks, rows_page

__all__ = ["batch_page", "batches_page", "login_page", "task_page", "workers_page"]

STATUSES = tuple(status.value for status in ExecutionStatus)
RECENT_BATCHES = 50
MAX_QUERY_CHARS = 200


async def batches_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    since = await newest_event_id(dashboard.redis, None)  # first: events after it are replayed live
    summaries = await dashboard.orchestrator.batches(RECENT_BATCHES)
    return render(
        request,
        "batches.html",
        nav="batches",
        batches=[batch_row(summary) for summary in summaries],
        since=since,
        schedules=await read_schedules(
            dashboard.settings, dashboard.orchestrator.agents, dashboard.redis, datetime.now(UTC)
        ),
    )


async def batch_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    batch_id = batch_id_param(request)
    summary, since = await dashboard.store.snapshot(batch_id)
    if summary is None:
        raise HTTPException(404, f"no batch {batch_id} (unknown, or its results have expired)")
    status = request.query_params.get("status", "")
    if status not in STATUSES:
        status = ""
    query = request.query_params.get("q", "")[:MAX_QUERY_CHARS]
    tasks = await load_batch_tasks(dashboard.store, batch_id)
    redactor = dashboard.redactor
    page = await rows_page(
        dashboard.store, batch_id, tasks, status=status, query=query, mask=redactor.redact_known
    )
    top_level = [tasks.tasks[t] for t in tasks.order if t not in tasks.parents and t in tasks.tasks]
    statuses = {task_id: state.value for task_id, state in tasks.states.items()}
    row = batch_row(summary)
    rerunnable = row.finished and any(tasks.states.get(task.id) in RERUN_STATUSES for task in top_level)
    return render(
        request,
        "batch.html",
        batch=dataclasses.replace(row, rerunnable=rerunnable),
        summary=summary,
        page=page,
        max_rows=MAX_ROWS,
        graph=layout(top_level, statuses, mask=redactor.redact_known),
        top_level_count=len(top_level),
        since=since,
        status=status,
        query=query,
        statuses=STATUSES,
        new_batch_id=new_batch_id(),
    )


async def task_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    batch_id, task_id = batch_id_param(request), task_id_param(request)
    redis = dashboard.redis
    since = await newest_event_id(redis, batch_id)
    task = await read_task(redis, batch_id, task_id)
    if task is None:
        raise HTTPException(404, f"no task {task_id} in batch {batch_id}")
    results = await dashboard.store.fetch_results(batch_id, [task_id])
    result = results.get(task_id)
    redactor = dashboard.redactor
    if result is not None:
        result = result.model_copy(
            update={
                "output": redactor.redact_known(result.output),
                "error": redactor.redact(result.error) if result.error is not None else None,
            }
        )
    parents = await read_parents(redis, batch_id)
    parent = parents.get(task_id)
    children = [child for child, of in parents.items() if of.task_id == task_id]
    state = result.status.value if result is not None else await read_state(redis, batch_id, task_id)
    return render(
        request,
        "task.html",
        batch_id=batch_id,
        task=task,
        title=redactor.redact_known(task.title),
        description=redactor.redact_known(task.description),
        result=result,
        state=state,
        parent=parent,
        children=sorted(children),
        timeline=[task_update(event, dashboard) for event in await task_events(redis, batch_id, task_id)],
        since=since,
    )


async def workers_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    redis, settings = dashboard.redis, dashboard.settings
    now = now_ms()
    workers = await live_workers(redis)
    depth = await queue_depth(redis, settings.queue_name, now)
    activity = dashboard.activity
    await activity.refresh(redis, now)
    minutes = activity.minutes(now)
    starts = [start for start, _ in minutes]
    throughput = bar_chart(
        starts,
        [
            ("succeeded", [float(m.succeeded) for _, m in minutes]),
            ("failed", [float(m.failed) for _, m in minutes]),
            ("cancelled", [float(m.cancelled) for _, m in minutes]),
        ],
        unit=" tasks",
        empty_label="no task finished in the last hour",
    )
    cost = bar_chart(
        starts,
        [("cost", [m.cost_usd for _, m in minutes])],
        unit=" USD",
        digits=4,
        empty_label="no cost recorded in the last hour",
    )
    limiter = RateLimiter(redis, dashboard.limits)
    uses = []
    for use in limit_use(dashboard.limits, activity.calls(now - 60_000), dashboard.provider_of):
        left = await limiter.cooldown_left(use.provider, use.model) if use.model is not None else 0.0
        uses.append(dataclasses.replace(use, cooldown_s=left))
    return render(
        request,
        "workers.html",
        nav="workers",
        workers=[(worker, ago(worker.heartbeat_ms, now)) for worker in workers],
        depth=depth,
        queue_name=settings.queue_name,
        throughput=throughput,
        cost=cost,
        finished_last_hour=sum(m.finished for _, m in minutes),
        cost_last_hour=sum(m.cost_usd for _, m in minutes),
        uses=uses,
        limits_file=str(settings.limits_file) if settings.limits_file is not None else "",
    )


async def login_page(request: Request, *, failed: bool = False, target: str | None = None) -> Response:
    """The login form; 401 because whoever sees it is not (yet) allowed in."""
    target = target or request.query_params.get("next") or request.url.path
    return render(request, "login.html", status_code=401, next=target, failed=failed)
