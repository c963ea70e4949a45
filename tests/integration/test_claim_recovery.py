"""A claim whose reply was lost: the claim script ran (its jobs are held by the worker's token), and
the reply never came. The worker asks for that claim again and runs its jobs, instead of leaving
them held by nobody until their lease runs out and another claim takes them (a second try each)."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.lua import script
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

StartWorkers = Callable[..., Any]
LEASE_S = 6.0


@pytest.mark.timeout(60)
async def test_a_claim_whose_reply_was_lost_is_recovered_before_its_lease_runs_out(
    real_settings: Settings, redis_server: RedisServer, start_workers: StartWorkers
) -> None:
    claim_sha = hashlib.sha1(script("claim").encode()).hexdigest().encode()
    tasks = [AgentTask(id=f"t{i}", title=f"task {i}") for i in range(4)]
    async with TcpProxy(redis_server.port) as proxy, ProjectOrchestrator(real_settings) as orch:
        # It claims only when woken (a poll would claim first, and lose an empty claim's reply).
        (worker,) = await start_workers(
            1, CODITECT_REDIS_URL=proxy.url, CODITECT_LEASE_S=str(LEASE_S), CODITECT_POLL_INTERVAL_S="5"
        )
        worker.signal(signal.SIGSTOP)  # the wake-up waits in its socket; the tasks wait in the queue
        try:
            await orch.submit(tasks, batch_id="lost-reply")  # straight to Redis, not through the proxy
            # Loaded already: the reply lost is the claim's, not a NOSCRIPT asking to load it.
            assert await orch.redis.script_load(script("claim")) == claim_sha.decode()
            proxy.lose_replies_to(claim_sha)
        finally:
            worker.signal(signal.SIGCONT)
        resumed = time.monotonic()
        results = await asyncio.wait_for(orch.wait("lost-reply"), 40)
        elapsed = time.monotonic() - resumed

    assert proxy.replies_lost == 1
    assert [(r.task_id, r.status, r.attempts) for r in results] == [
        (task.id, ExecutionStatus.SUCCESS, 1) for task in tasks
    ]
    log = "\n".join(worker.lines)
    assert "its reply was lost; 4 job(s) it claimed recovered" in log, log
    assert elapsed < LEASE_S, elapsed  # recovered after a third of a lease, not after the lease
