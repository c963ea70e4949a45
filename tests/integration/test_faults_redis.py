"""Fault matrix, Redis (issue 4, row 3): restarts with and without persistence, cut connections, no Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from coditect.client import orchestrator, waiter
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.settings import Settings
from tests.support.fake_provider import refused_port
from tests.support.faults import NO_LEFTOVERS, eventually, leftovers, run_command
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import WorkerProcess

StartWorkers = Callable[..., Any]
OwnRedis = Callable[[bool], Awaitable[RedisServer]]

REDIS_ERROR_LINE = "redis error in worker loop"


def tasks(count: int, prefix: str) -> list[AgentTask]:
    return [AgentTask(id=f"{prefix}{i}", title=f"task {i}") for i in range(count)]


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[Callable[[bool], Awaitable[RedisServer]]]:
    """Starts a redis-server for this test alone (the test kills it); killed at the end."""
    servers: list[RedisServer] = []

    async def start(appendonly: bool) -> RedisServer:
        server = RedisServer(tmp_path / "redis", appendonly=appendonly)
        servers.append(server)
        await asyncio.to_thread(server.start)
        return server

    yield start
    for server in servers:
        await asyncio.to_thread(server.kill)


async def restart(server: RedisServer) -> None:
    """Start ``server`` again on its port, with whatever it persisted."""
    restarted = RedisServer(server.workdir, appendonly=server.appendonly, port=server.port)
    try:
        await asyncio.to_thread(restarted.start)
    finally:
        server.process = restarted.process  # the fixture stops it, whatever happens


async def results_written(client: redis.asyncio.Redis) -> int:
    return len([key async for key in client.scan_iter(match="arq:result:*", count=1000)])


def saw_redis_errors(workers: list[WorkerProcess]) -> bool:
    return all(any(REDIS_ERROR_LINE in line for line in w.lines) for w in workers)


def alive(workers: list[WorkerProcess]) -> bool:
    return all(w.process is not None and w.process.returncode is None for w in workers)


async def restart_mid_batch(
    server: RedisServer, start_workers: StartWorkers, batch_id: str
) -> tuple[list[ExecutionResult], list[WorkerProcess]]:
    """Run 24 one-second tasks on 2 workers; kill Redis once some finished, restart it once both noticed."""
    workers = await start_workers(
        2,
        CODITECT_REDIS_URL=server.url,
        CODITECT_OFFLINE_LATENCY_S="1",
        CODITECT_MAX_JOBS="4",
        CODITECT_LEASE_S="3",
    )
    settings = Settings(_env_file=None, redis_url=server.url)
    async with (
        redis.asyncio.Redis.from_url(server.url) as client,
        ProjectOrchestrator(settings) as orch,
    ):
        run = asyncio.create_task(orch.run_batch(tasks(24, "r"), batch_id=batch_id))
        try:
            await eventually(lambda: _at_least(4, results_written(client)), timeout_s=15, what="4 results")
            await asyncio.to_thread(server.kill)
            await eventually(
                lambda: _ready(saw_redis_errors(workers)), timeout_s=10, what="workers to notice"
            )
            await restart(server)
            results = await asyncio.wait_for(asyncio.shield(run), 45)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    return results, workers


async def _at_least(count: int, probe: Any) -> int | None:
    value: int = await probe
    return value if value >= count else None


async def _ready(value: bool) -> bool:
    return value


# -- 3a. restart with AOF ----------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_redis_restarted_with_aof_mid_batch_workers_and_orchestrator_reconnect(
    own_redis: OwnRedis, start_workers: StartWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="coditect")
    server = await own_redis(True)
    results, workers = await restart_mid_batch(server, start_workers, "aof")
    assert [r.status for r in results] == [ExecutionStatus.SUCCESS] * 24
    assert [r.task_id for r in results] == [f"r{i}" for i in range(24)]
    assert alive(workers)
    # Nothing was lost, so nothing had to be enqueued again.
    assert not any("lost by Redis" in record.getMessage() for record in caplog.records)
    async with redis.asyncio.Redis.from_url(server.url) as client:
        assert await leftovers(client) == NO_LEFTOVERS


# -- 3b. restart without persistence -----------------------------------------------------------


@pytest.mark.timeout(90)
async def test_redis_restarted_empty_mid_batch_the_orchestrator_enqueues_its_lost_jobs_again(
    own_redis: OwnRedis, start_workers: StartWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="coditect")
    server = await own_redis(False)
    results, workers = await restart_mid_batch(server, start_workers, "empty")
    assert [r.status for r in results] == [ExecutionStatus.SUCCESS] * 24
    assert [r.task_id for r in results] == [f"r{i}" for i in range(24)]
    assert alive(workers)
    assert any("lost by Redis;" in record.getMessage() for record in caplog.records)
    async with redis.asyncio.Redis.from_url(server.url) as client:
        assert await leftovers(client) == NO_LEFTOVERS


# -- 3c. connections cut every 1.5 s -----------------------------------------------------------


@pytest.mark.timeout(90)
async def test_a_batch_completes_while_every_redis_connection_is_cut_every_one_and_a_half_seconds(
    redis_url: str, redis_server: RedisServer, start_workers: StartWorkers
) -> None:
    async with TcpProxy(redis_server.port) as proxy:
        workers = await start_workers(
            2,
            CODITECT_REDIS_URL=proxy.url,
            CODITECT_OFFLINE_LATENCY_S="0.4",
            CODITECT_MAX_JOBS="3",
            CODITECT_LEASE_S="3",
        )
        settings = Settings(_env_file=None, redis_url=proxy.url)
        batch = tasks(60, "c")
        async with ProjectOrchestrator(settings) as orch:
            accepted_before = proxy.accepted
            proxy.start_cutting(every_s=1.5, rounds=4)
            results = await asyncio.wait_for(orch.run_batch(batch, batch_id="cut"), 60)
            await proxy.wait_cutting_done()
        assert alive(workers), [w.lines[-10:] for w in workers]
        assert proxy.cut_rounds == 4
        assert proxy.cut >= 4 * 2  # each round cut at least both workers' links (pub/sub is always open)
        assert proxy.accepted >= accepted_before + 2 * 3  # and the workers came back after each round
    assert [r.status for r in results] == [ExecutionStatus.SUCCESS] * 60
    assert [r.task_id for r in results] == [t.id for t in batch]
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        assert await leftovers(client) == NO_LEFTOVERS


@pytest.mark.timeout(60)
async def test_the_orchestrator_drops_connections_that_went_silent_and_carries_on(
    redis_url: str,
    redis_server: RedisServer,
    start_workers: StartWorkers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No RST, no FIN: the replies just stop coming (a NAT or firewall that forgot the connection).
    caplog.set_level(logging.WARNING, logger="coditect")
    monkeypatch.setattr(orchestrator, "REDIS_REPLY_TIMEOUT_S", 1.0)
    monkeypatch.setattr(waiter, "REDIS_REPLY_TIMEOUT_S", 1.0)
    # Three rounds of two tasks, straight to Redis, not through the proxy.
    await start_workers(1, CODITECT_OFFLINE_LATENCY_S="0.5", CODITECT_MAX_JOBS="2")
    async with (
        TcpProxy(redis_server.port) as proxy,
        redis.asyncio.Redis.from_url(redis_url) as client,
        ProjectOrchestrator(Settings(_env_file=None, redis_url=proxy.url)) as orch,
    ):
        assert proxy.freeze_all() == 1  # the pooled connection the batch will be enqueued on
        run = asyncio.create_task(orch.run_batch(tasks(6, "f"), batch_id="silent"))
        try:
            await eventually(lambda: _at_least(1, results_written(client)), timeout_s=15, what="a result")
            assert proxy.freeze_all() >= 1  # the connection the orchestrator now waits on
            results = await asyncio.wait_for(asyncio.shield(run), 15)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    assert [r.status for r in results] == [ExecutionStatus.SUCCESS] * 6
    silences = [r for r in caplog.records if r.getMessage().startswith("Redis unreachable (TimeoutError")]
    assert len(silences) >= 2


@pytest.mark.timeout(60)
async def test_a_worker_drops_connections_that_went_silent_and_carries_on(
    real_settings: Settings, redis_server: RedisServer, start_workers: StartWorkers
) -> None:
    async with TcpProxy(redis_server.port) as proxy:
        (worker,) = await start_workers(
            1, CODITECT_REDIS_URL=proxy.url, CODITECT_LEASE_S="2", CODITECT_OFFLINE_LATENCY_S="0.2"
        )
        # Its claim loop's and its wake-up channel's connections, at least.
        await eventually(lambda: _ready(proxy.open_connections >= 2), timeout_s=5, what="2 connections")
        assert proxy.freeze_all() >= 2
        async with ProjectOrchestrator(real_settings) as orch:  # straight to Redis
            results = await asyncio.wait_for(orch.run_batch(tasks(6, "w"), batch_id="mute"), 20)
        assert alive([worker])
    assert [r.status for r in results] == [ExecutionStatus.SUCCESS] * 6
    assert any("redis error in worker loop (TimeoutError" in line for line in worker.lines), worker.lines


# -- 3d. Redis unreachable when a command starts -----------------------------------------------


@pytest.mark.parametrize("command", ["run", "submit"])
async def test_a_command_against_unreachable_redis_exits_2_with_one_line_naming_the_url(
    tmp_path: Path, worker_env: dict[str, str], command: str
) -> None:
    batch_file = tmp_path / "batch.json"
    batch_file.write_text(json.dumps({"tasks": [{"id": "a", "title": "A"}]}))
    with refused_port() as port:
        url = f"redis://127.0.0.1:{port}"
        started = time.monotonic()
        code, out, err = await run_command(
            sys.executable, "-m", "coditect", command, str(batch_file), "--redis-url", url, env=worker_env
        )
        elapsed = time.monotonic() - started
    assert code == 2
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("coditect: error: ")
    assert url in lines[0]
    assert "Traceback" not in err.decode()
    assert elapsed < 5


# -- 3e. Redis silent past the outage limit during run and watch -------------------------------

PASSWORD = "outage-password-7f3a"


async def blocked_in_xread(client: redis.asyncio.Redis) -> bool:
    """True once some client (the command's waiter) is blocked reading its batch's events."""
    return any(entry.get("cmd") == "xread" for entry in await client.client_list())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["run", "watch"])
async def test_a_redis_silent_past_the_outage_limit_ends_run_and_watch_with_one_line_and_exit_2(
    own_redis: OwnRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    from coditect import backoff
    from coditect.cli.app import main

    monkeypatch.setattr(backoff, "REDIS_OUTAGE_LIMIT_S", 1.0)
    monkeypatch.setattr(orchestrator, "REDIS_REPLY_TIMEOUT_S", 0.5)
    monkeypatch.setattr(waiter, "REDIS_REPLY_TIMEOUT_S", 0.5)
    server = await own_redis(False)
    async with redis.asyncio.Redis.from_url(server.url) as client:
        await client.config_set("requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([{"id": "a", "title": "never runs: no worker"}]))
    if command == "run":
        argv = ["run", str(batch), "--redis-url", url, "--json"]
    else:
        assert (
            await asyncio.to_thread(main, ["submit", str(batch), "--redis-url", url, "--batch-id", "b1"]) == 0
        )
        argv = ["watch", "b1", "--redis-url", url, "--json"]
    capsys.readouterr()
    assert server.process is not None
    pid = server.process.pid
    async with redis.asyncio.Redis.from_url(url) as client:
        cli = asyncio.create_task(asyncio.to_thread(main, argv))
        try:
            await eventually(lambda: blocked_in_xread(client), timeout_s=10, what=f"{command} to wait")
            os.kill(pid, signal.SIGSTOP)
            started = time.monotonic()
            code = await asyncio.wait_for(asyncio.shield(cli), 30)
            elapsed = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
            await asyncio.gather(cli, return_exceptions=True)
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert PASSWORD not in err
    lines = err.splitlines()
    assert (
        lines[-1]
        == f"coditect: error: Redis at redis://:***@127.0.0.1:{server.port}/0 did not answer for 1 s"
    )
    # Before it: only the warnings of the retries that rode the outage out.
    assert all("Redis unreachable" in line for line in lines[:-1]), lines
    assert elapsed < 15
