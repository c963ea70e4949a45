"""A connection cut while a big batch is sent in chunks: what was sent is withdrawn, and the batch is
sent again whole once Redis answers, instead of being taken for a batch that existed already (it
then waited for ever for the tasks of the chunks that never arrived)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

import coditect.client.batches as batches
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

StartWorkers = Callable[..., Any]
MORE_CHUNK = b"$4\r\nmore\r\n"  # submit.lua's 'more' argument, as RESP writes it


@pytest.mark.timeout(60)
async def test_a_cut_connection_mid_batch_withdraws_what_was_sent_and_sends_the_batch_again_whole(
    redis_server: RedisServer,
    real_settings: Settings,
    start_workers: StartWorkers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="coditect")
    monkeypatch.setattr(batches, "ATOMIC_TASKS", 10)
    monkeypatch.setattr(batches, "CHUNK", 5)
    tasks = [AgentTask(id=f"t{i}", title=f"task {i}") for i in range(20)]
    async with TcpProxy(redis_server.port) as proxy:
        settings = Settings(_env_file=None, redis_url=proxy.url)
        async with ProjectOrchestrator(settings) as orch:
            proxy.cut_on(MORE_CHUNK)  # the second chunk never reaches Redis; its connection is reset
            assert await orch.submit(tasks, batch_id="cut") == "cut"
        assert proxy.cut == 1

    await start_workers(1)
    async with ProjectOrchestrator(real_settings) as orch:
        results = await asyncio.wait_for(orch.wait("cut"), 30)
        summary = await orch.summary("cut")
    assert [(r.task_id, r.status, r.attempts) for r in results] == [
        (task.id, ExecutionStatus.SUCCESS, 1) for task in tasks
    ]
    assert summary.total == 20
    withdrawn = [r.getMessage() for r in caplog.records if "not enqueued whole" in r.getMessage()]
    assert len(withdrawn) == 1, withdrawn
    assert withdrawn[0].endswith("withdrawn: 5 queued task(s) removed, 0 running aborted")
