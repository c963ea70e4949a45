"""The Anthropic key never leaves the worker's environment, except in the request's Authorization header.

A real worker process holds ``ANTHROPIC_API_KEY`` and talks to the fake provider (a process of its
own); the batch meets a 401 and a 429 whose messages echo the key, as some servers do. Then: every
key and value in Redis, the worker's log, the results and ``coditect results --json`` are searched.

That ``repr(Settings())`` and ``model_dump_json()`` hide the key is tested in
``tests/test_settings.py::test_anthropic_key_is_a_secret_that_never_appears``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio
from pydantic import SecretStr

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings

StartWorkers = Callable[..., Any]
ROOT = Path(__file__).resolve().parents[2]
SUFFIX = secrets.token_hex(12)
KEY = f"sk-ant-test-SECRET-{SUFFIX}"


@pytest.fixture
async def fake_provider() -> AsyncIterator[str]:
    """``tests/support/fake_provider.py`` as a process; its base URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "tests" / "support" / "fake_provider.py"), "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            port = int(await process.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        await process.wait()


async def scan_redis(url: str) -> dict[bytes, list[bytes]]:
    """Every key of every database, with every value in it, read by type (no DUMP)."""
    found: dict[bytes, list[bytes]] = {}
    client = redis.asyncio.Redis.from_url(url)
    try:
        databases = [int(name[2:]) for name in (await client.info("keyspace"))]
    finally:
        await client.aclose()
    for db in databases:
        client = redis.asyncio.Redis.from_url(url, db=db)
        try:
            async for key in client.scan_iter(count=500):
                kind = (await client.type(key)).decode()
                values: list[Any]
                if kind == "string":
                    values = [await client.get(key)]
                elif kind == "list":
                    values = await client.lrange(key, 0, -1)
                elif kind == "set":
                    values = list(await client.smembers(key))
                elif kind == "zset":
                    values = [member for member, _ in await client.zrange(key, 0, -1, withscores=True)]
                elif kind == "hash":
                    pairs = await client.hgetall(key)
                    values = [part for pair in pairs.items() for part in pair]
                elif kind == "stream":
                    entries = await client.xrange(key)
                    values = [part for _, fields in entries for pair in fields.items() for part in pair]
                else:
                    raise AssertionError(f"key {key!r} has a type this scan cannot read: {kind}")
                found[key] = [v for v in values if v is not None]
        finally:
            await client.aclose()
    return found


async def test_the_key_never_leaves_the_worker_but_in_the_authorization_header(
    real_settings: Settings, start_workers: StartWorkers, fake_provider: str, worker_env: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=fake_provider) as control:
        for plan in (
            {"status": 401, "message": f"invalid x-api-key: {KEY}"},
            {"status": 429, "headers": {"retry-after": "0.1"}, "message": f"slow down, Bearer {KEY}"},
        ):
            (await control.post("/_fake/plan", json=plan)).raise_for_status()
    (worker,) = await start_workers(
        1,
        ANTHROPIC_API_KEY=KEY,
        CODITECT_ANTHROPIC_BASE_URL=fake_provider,
        CODITECT_RETRY_BACKOFF_S="0.05",
        CODITECT_MAX_TRIES="3",
    )
    # The orchestrator's process holds the key too, as an app's often does.
    settings = real_settings.model_copy(update={"anthropic_api_key": SecretStr(KEY)})
    tasks = [AgentTask(id=f"s{i}", title=f"task {i}", description="say hello") for i in range(4)]
    async with ProjectOrchestrator(settings) as orch:
        results = await orch.run_batch(tasks, batch_id="secrets")

    # One task met the 401 (failed at once), one the 429 (retried, then fine).
    by_status = sorted((r.status, r.attempts) for r in results)
    assert by_status == [
        (ExecutionStatus.FAILED, 1),
        *[(ExecutionStatus.SUCCESS, 1)] * 2,
        (ExecutionStatus.SUCCESS, 2),
    ]
    (failed,) = [r for r in results if r.status is ExecutionStatus.FAILED]
    assert failed.error is not None
    assert "HTTP 401" in failed.error
    assert "***" in failed.error  # the echoed key, removed where the error was made
    results_json = json.dumps([r.to_json_dict() for r in results])

    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coditect", "results", "secrets", "--json",
        env={**worker_env, "ANTHROPIC_API_KEY": KEY},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        cli_out, cli_err = await cli.communicate()
    assert cli.returncode == 1, cli_err.decode()  # one task failed
    assert [item["task_id"] for item in json.loads(cli_out)["results"]] == [t.id for t in tasks]

    await worker.stop()  # all of its log, shutdown included
    worker_log = "\n".join(worker.lines)
    assert "retrying in" in worker_log  # the 429 was logged, with the provider's (redacted) message

    stored = await scan_redis(real_settings.redis_url)
    keys = {key.decode() for key in stored}
    assert "coditect:batch:secrets" in keys
    assert {f"arq:result:coditect:secrets:{t.id}" for t in tasks} <= keys

    async with httpx.AsyncClient(base_url=fake_provider) as control:
        requests = (await control.get("/_fake/requests")).json()
    assert len(requests) == 5  # four tasks, one retry
    for request in requests:
        assert request["headers"]["authorization"] == f"Bearer {KEY}"
        others = {name: value for name, value in request["headers"].items() if name != "authorization"}
        assert SUFFIX not in json.dumps(others)
        assert SUFFIX not in json.dumps(request["body"])

    places = {
        "the results": results_json,
        "coditect results --json": cli_out.decode(),
        "the stderr of coditect results": cli_err.decode(),
        "the worker's log": worker_log,
    }
    for where, text in places.items():
        assert SUFFIX not in text, f"the key leaked into {where}"
    for key, values in stored.items():
        assert SUFFIX.encode() not in key, f"the key leaked into the name of {key!r}"
        for value in values:
            assert SUFFIX.encode() not in value, f"the key leaked into Redis key {key!r}"
