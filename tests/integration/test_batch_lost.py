"""``coditect watch`` when Redis has lost the batch: restarted without persistence after a ``submit``.

Nobody holds the batch's tasks (``watch`` only follows it), so nothing can be enqueued again: the
waiter raises ``BatchLost`` and the command says the batch's record is gone, and exits 2.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from tests.support.faults import eventually, run_command
from tests.support.redis_server import RedisServer


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server without persistence, for this test alone (it is killed and started again)."""
    own = RedisServer(tmp_path / "redis", appendonly=False)
    await asyncio.to_thread(own.start)
    yield own
    await asyncio.to_thread(own.kill)


async def watching(client: redis.asyncio.Redis) -> bool:
    """True once a client (the watch command's waiter) is blocked reading the batch's events."""
    return any(entry.get("cmd") == "xread" for entry in await client.client_list())


@pytest.mark.timeout(60)
async def test_watch_says_the_batch_is_gone_when_redis_restarted_empty(
    server: RedisServer, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**worker_env, "CODITECT_REDIS_URL": server.url}
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([{"id": "a", "title": "A"}, {"id": "b", "title": "B", "depends_on": ["a"]}]))
    code, out, err = await run_command(
        sys.executable, "-m", "coditect", "submit", str(batch), "--batch-id", "gone", env=env
    )
    assert (code, out.strip()) == (0, b"gone"), err

    watch = asyncio.create_task(
        run_command(sys.executable, "-m", "coditect", "watch", "gone", "--json", env=env, timeout_s=40)
    )
    try:
        async with redis.asyncio.Redis(port=server.port) as client:
            await eventually(lambda: watching(client), timeout_s=15, what="watch to follow the batch")
        await asyncio.to_thread(server.kill)  # no worker ever ran it, and nothing was persisted
        restarted = RedisServer(server.workdir, appendonly=False, port=server.port)
        await asyncio.to_thread(restarted.start)
        server.process = restarted.process
        code, out, err = await asyncio.wait_for(asyncio.shield(watch), 40)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)

    assert (code, out) == (2, b"")
    lines = err.decode().splitlines()
    assert lines[-1] == (
        "coditect: error: batch gone: its record is gone from Redis (it expired, or Redis restarted "
        "without persistence and lost it)"
    )
    assert all("Redis unreachable" in line for line in lines[:-1]), lines  # the restart, ridden out
    assert "Traceback" not in err.decode()
