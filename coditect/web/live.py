"""Live updates as Server-Sent Events, read from the event streams with ``XREAD BLOCK``.

``/batches/<id>/live``: each event of the batch after ``since`` (or the browser's ``Last-Event-ID``
when it reconnects) as a ``task`` message (the task's new status and, once final, its duration,
tokens and cost), a ``newtask`` message for a task the page has not seen (a delegated child: its
title, agent and parent), and after each read a ``summary`` message (counts and totals of the
batch). With ``?task=<id>``, only that task's ``task`` messages. ``/live``: a ``batch`` message
(the row of the batches page) for each batch with new events.

Every message carries the stream id of its event, so a reconnecting browser resumes where it was;
replayed events are harmless (the page never moves a task out of a final status). A stream ends
when the server stops or Redis fails (the browser then reconnects).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from coditect.client.batches import summary_from
from coditect.client.events import Event, read_events
from coditect.keys import BATCH_KEY_PREFIX
from coditect.models import TASK_ID_PATTERN
from coditect.web.batch_rows import batch_row
from coditect.web.formatting import duration, money, token_pair
from coditect.web.reads import read_parent, read_task
from coditect.web.rendering import batch_id_param, dashboard_of
from coditect.web.state import Dashboard

__all__ = ["STATUS_OF_EVENT", "all_batches_live", "batch_live", "sse", "task_update"]

logger = logging.getLogger(__name__)

STATUS_OF_EVENT = {
    "task.queued": "queued",
    "task.started": "running",
    "task.retrying": "queued",
    "task.succeeded": "success",
    "task.failed": "failed",
    "task.timeout": "timeout",
    "task.cancelled": "cancelled",
}
# How long one XREAD waits before the stream counts towards its keep-alive.
BLOCK_MS = 2000
KEEP_ALIVE_S = 15.0
# The batches page is told of busy batches at most this often.
ALL_BATCHES_EVERY_S = 0.5
RETRY_MS = 2000
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_TASK_ID = re.compile(TASK_ID_PATTERN)


def sse(kind: str, data: dict[str, Any], event_id: str | None = None) -> str:
    """One Server-Sent Events message (JSON never holds a raw newline, so it is one data line)."""
    head = f"event: {kind}\n" + (f"id: {event_id}\n" if event_id else "")
    return head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n"


def task_update(event: Event, dashboard: Dashboard) -> dict[str, Any]:
    """What the page changes in a task's row (and timeline) for one event."""
    data = event.data
    update: dict[str, Any] = {
        "task_id": event.task_id,
        "type": event.type,
        "status": STATUS_OF_EVENT.get(event.type, ""),
        "attempt": event.attempt,
        "worker": event.worker or "",
        "at": event.at.strftime("%H:%M:%S.%f")[:-3],
        "error": dashboard.redactor.redact(str(data["error"])) if data.get("error") else "",
    }
    if event.is_final:
        tokens_in = sum(int(data.get(kind, 0)) for kind in ("in", "cache_read", "cache_write"))
        update.update(
            duration=duration(data.get("duration")),
            tokens=token_pair(tokens_in, int(data.get("out", 0))) if "in" in data else "-",
            cost=money(data.get("cost")),
            agent=str(data.get("agent", "")),
            model=str(data.get("model", "")),
        )
    update["detail"] = _detail(update)
    return update


def _detail(update: dict[str, Any]) -> str:
    """The rest of a timeline line: ``attempt 1 · host:42 · 0.52 s · 34 + 13 tokens · $0.0001 · error``."""
    parts = []
    if update["attempt"]:
        parts.append(f"attempt {update['attempt']}")
    if update["worker"]:
        parts.append(f"on {update['worker']}")
    if update.get("duration", "-") != "-":
        parts.append(update["duration"])
    if update.get("tokens", "-") != "-":
        parts.append(f"{update['tokens']} tokens")
    if update.get("cost", "-") != "-":
        parts.append(update["cost"])
    if update["error"]:
        parts.append(update["error"])
    return " · ".join(parts)


async def _next_events(dashboard: Dashboard, batch_id: str | None, last: str) -> list[Event] | None:
    """The events after ``last`` (waiting up to ``BLOCK_MS``), or None once the server is stopping."""
    read = asyncio.ensure_future(read_events(dashboard.redis, batch_id, last, block_ms=BLOCK_MS))
    stopping = asyncio.ensure_future(dashboard.closing.wait())
    try:
        await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in (read, stopping):
            waiting.cancel()
        # A blocked read that is cancelled closes its connection; nothing of it is left running.
        await asyncio.gather(read, stopping, return_exceptions=True)
    if dashboard.closing.is_set() or read.cancelled():
        return None
    return read.result()


def _since(request: Request) -> str:
    since = request.headers.get("last-event-id") or request.query_params.get("since") or "0-0"
    if not _STREAM_ID.match(since):
        raise HTTPException(400, "since must be an event id such as 1700000000000-0")
    return since


def _stream(messages: AsyncIterator[str]) -> Response:
    return StreamingResponse(messages, media_type="text/event-stream", headers={"x-accel-buffering": "no"})


async def batch_live(request: Request) -> Response:
    dashboard = dashboard_of(request)
    batch_id = batch_id_param(request)
    since = _since(request)
    only = request.query_params.get("task")
    if only is not None and not _TASK_ID.match(only):
        raise HTTPException(400, "not a task id")
    if not await dashboard.store.exists(batch_id):
        raise HTTPException(404, f"no batch {batch_id}")
    return _stream(_batch_messages(dashboard, batch_id, since, only))


async def _batch_messages(
    dashboard: Dashboard, batch_id: str, since: str, only: str | None
) -> AsyncIterator[str]:
    store = dashboard.store
    try:
        known = set(await store.task_ids(batch_id))
        yield f"retry: {RETRY_MS}\n\n"
        last, quiet_s = since, 0.0
        while True:
            events = await _next_events(dashboard, batch_id, last)
            if events is None:
                return
            if not events:
                quiet_s += BLOCK_MS / 1000
                if quiet_s >= KEEP_ALIVE_S:  # also how a closed connection is noticed
                    quiet_s = 0.0
                    yield ": keep-alive\n\n"
                continue
            quiet_s = 0.0
            last = events[-1].id
            out = []
            for event in events:
                if event.task_id is None or (only is not None and event.task_id != only):
                    continue
                if only is None and event.task_id not in known:
                    known.add(event.task_id)
                    out.append(await _new_task(dashboard, batch_id, event.task_id))
                out.append(sse("task", task_update(event, dashboard), event.id))
            if only is None:
                summary = await store.summary(batch_id)
                if summary is not None:
                    out.append(sse("summary", batch_row(summary).to_json_dict(), last))
            if out:
                yield "".join(out)
    except RedisError as err:
        logger.warning("live stream of batch %s ended: %s", batch_id, err)


async def _new_task(dashboard: Dashboard, batch_id: str, task_id: str) -> str:
    task = await read_task(dashboard.redis, batch_id, task_id)
    parent = await read_parent(dashboard.redis, batch_id, task_id)
    return sse(
        "newtask",
        {
            "task_id": task_id,
            "title": dashboard.redactor.redact_known(task.title) if task is not None else "",
            "agent": task.agent if task is not None else "",
            "parent": parent.task_id if parent is not None else None,
            "depth": parent.depth if parent is not None else 0,
        },
    )


async def all_batches_live(request: Request) -> Response:
    dashboard = dashboard_of(request)
    return _stream(_all_batches_messages(dashboard, _since(request)))


async def _all_batches_messages(dashboard: Dashboard, since: str) -> AsyncIterator[str]:
    redis = dashboard.redis
    yield f"retry: {RETRY_MS}\n\n"
    try:
        last, quiet_s = since, 0.0
        while True:
            events = await _next_events(dashboard, None, last)
            if events is None:
                return
            if not events:
                quiet_s += BLOCK_MS / 1000
                if quiet_s >= KEEP_ALIVE_S:
                    quiet_s = 0.0
                    yield ": keep-alive\n\n"
                continue
            quiet_s = 0.0
            last = events[-1].id
            touched = list(dict.fromkeys(event.batch_id for event in events if event.batch_id))
            async with redis.pipeline(transaction=False) as pipe:
                for batch_id in touched:
                    pipe.hgetall(BATCH_KEY_PREFIX + batch_id)
                raws = await pipe.execute()
            rows = "".join(
                sse("batch", batch_row(summary_from(batch_id, raw)).to_json_dict(), last)
                for batch_id, raw in zip(touched, raws, strict=True)
                if raw
            )
            if rows:
                yield rows
            await asyncio.sleep(ALL_BATCHES_EVERY_S)  # a rate limit for busy hours, not a wait for anything
    except RedisError as err:
        logger.warning("live stream of all batches ended: %s", err)
