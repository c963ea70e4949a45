"""What coditect does with the Redis it is given: small ``maxmemory``, an evicting policy, an ACL.

Each test starts its own redis-server (configured with CONFIG SET and ACL SETUSER after it starts)
and runs real worker processes and the real command line against it:

- out of memory under ``noeviction``: a batch is enqueued whole or not at all, and the error is one
  short line naming the cause (never the command's arguments: megabytes of prompts);
- a Redis user that may not PUBLISH enqueues nothing (the wake-up goes out before any write);
- an evicting policy is warned about, and a job payload that vanished is re-created from its batch;
- a least-privilege user (no INFO, CONFIG, KEYS) runs everything; a refused command is said once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from coditect.keys import BATCH_KEY_PREFIX, EVENTS_KEY_PREFIX
from tests.support.faults import eventually, run_command
from tests.support.redis_server import RedisServer
from tests.support.workers import ARQ_BIN, WorkerProcess

StartWorkers = Callable[..., Any]
OwnRedis = Callable[..., Awaitable[RedisServer]]

ADMIN_PASSWORD = "admin-pw-3c1e"
LEAST_PRIVILEGE = ("~coditect:*", "~arq:*", "&coditect:*", "+@all", "-@dangerous")


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    """A redis-server for one test, with ``CONFIG SET name value`` for each keyword (``_`` for ``-``)."""
    servers: list[RedisServer] = []

    async def start(**config: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}")
        servers.append(server)
        await asyncio.to_thread(server.start)
        async with redis.asyncio.Redis(port=server.port) as admin:
            for name, value in config.items():
                await admin.config_set(name.replace("_", "-"), value)
        return server

    yield start
    for server in servers:
        await asyncio.to_thread(server.kill)


def password_of(name: str) -> str:
    # Not made of the name: logs mask every run of 8 characters of the Redis password.
    return hashlib.sha256(name.encode()).hexdigest()[:16]


async def add_user(server: RedisServer, name: str, *rules: str) -> str:
    """``ACL SETUSER name on >password rules...``; returns the URL that logs in as that user."""
    async with redis.asyncio.Redis(port=server.port) as admin:
        await admin.execute_command("ACL", "SETUSER", name, "on", f">{password_of(name)}", *rules)
    return f"redis://{name}:{password_of(name)}@127.0.0.1:{server.port}/0"


def batch_file(folder: Path, name: str, count: int, description_chars: int, *, chain: bool = False) -> Path:
    tasks: list[dict[str, Any]] = [
        {"id": f"t{i}", "title": f"task {i}", "description": "d" * description_chars} for i in range(count)
    ]
    if chain:
        for i in range(1, count):
            tasks[i]["depends_on"] = [f"t{i - 1}"]
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"name": name, "tasks": tasks}))
    return path


async def coditect(*args: str, env: dict[str, str], timeout_s: float = 60) -> tuple[int, str, str]:
    code, out, err = await run_command(sys.executable, "-m", "coditect", *args, env=env, timeout_s=timeout_s)
    return code, out.decode(), err.decode()


async def keys_of(client: redis.asyncio.Redis, batch_id: str) -> list[bytes]:
    """Every key that belongs to the batch: its record, events, jobs, results, try counters, leases."""
    found = [key async for key in client.scan_iter(match=f"*{batch_id}*", count=1000)]
    return sorted(found)


def error_line(err: str) -> str:
    """The command's error line (warnings may come before it)."""
    lines = [line for line in err.splitlines() if line.startswith("coditect: error: ")]
    assert len(lines) == 1, err[:2000]
    return lines[0]


# -- out of memory -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["submit", "run"])
async def test_a_batch_that_does_not_fit_is_refused_before_anything_runs(
    own_redis: OwnRedis, start_workers: StartWorkers, worker_env: dict[str, str], tmp_path: Path, command: str
) -> None:
    server = await own_redis(maxmemory="12mb", maxmemory_policy="noeviction")
    (worker,) = await start_workers(1, CODITECT_REDIS_URL=server.url)
    batch = batch_file(tmp_path, "big", 1500, 4000)  # 6 MB of tasks: one script call would take it
    env = {**worker_env, "CODITECT_REDIS_URL": server.url}

    code, out, err = await coditect(command, str(batch), "--batch-id", "big", env=env)

    assert (code, out) == (2, "")
    assert len(err) < 300, err[:2000]
    line = error_line(err)
    assert line.startswith("coditect: error: Redis is out of memory (maxmemory 12.0 MB, "), line
    assert line.endswith("batch big needs about 16.2 MB): nothing was enqueued"), line
    async with redis.asyncio.Redis(port=server.port) as client:
        assert await keys_of(client, "big") == []
        assert await client.zcard("coditect:queue") == 0
    assert not any("coditect:big:" in line for line in worker.lines)  # no task of it ran


@pytest.mark.parametrize("user", ["default", "no-info"])
async def test_a_batch_of_megabytes_gets_a_short_error_naming_the_memory(
    own_redis: OwnRedis, worker_env: dict[str, str], tmp_path: Path, user: str
) -> None:
    # 15 MB of prompts in one script call. The default user's check refuses it before sending; a user
    # who may not run INFO sends it, and Redis refuses the script's first write.
    server = await own_redis(maxmemory="12mb", maxmemory_policy="noeviction")
    url = server.url if user == "default" else await add_user(server, "noinfo", *LEAST_PRIVILEGE)
    batch = batch_file(tmp_path, "huge", 100, 150_000)

    code, out, err = await coditect(
        "submit", str(batch), "--batch-id", "huge", env={**worker_env, "CODITECT_REDIS_URL": url}
    )

    assert (code, out) == (2, "")
    assert len(err) < 600, f"{len(err)} bytes on stderr"
    line = error_line(err)
    assert line.startswith("coditect: error: Redis is out of memory (maxmemory "), line
    assert line.endswith("nothing was enqueued" if user == "default" else "batch huge was not enqueued"), line
    assert "ddddd" not in err
    async with redis.asyncio.Redis(port=server.port) as client:
        assert await keys_of(client, "huge") == []


async def test_a_big_batch_whose_later_chunk_fails_is_withdrawn_and_its_running_tasks_aborted(
    own_redis: OwnRedis, start_workers: StartWorkers, worker_env: dict[str, str], tmp_path: Path
) -> None:
    # 6,000 tasks go in chunks of 500 (over ATOMIC_TASKS); a user without INFO gets no check up front,
    # so the first chunks are written, workers start on them, and a later chunk finds Redis full.
    server = await own_redis(maxmemory="8mb", maxmemory_policy="noeviction")
    url = await add_user(server, "noinfo", *LEAST_PRIVILEGE)
    (worker,) = await start_workers(
        1, CODITECT_REDIS_URL=server.url, CODITECT_OFFLINE_LATENCY_S="60", CODITECT_MAX_JOBS="20"
    )
    batch = batch_file(tmp_path, "chunked", 6000, 1000)

    code, out, err = await coditect(
        "submit", str(batch), "--batch-id", "chunked", env={**worker_env, "CODITECT_REDIS_URL": url}
    )

    assert (code, out) == (2, "")
    line = error_line(err)
    assert line.startswith(
        "coditect: error: Redis is out of memory (maxmemory reached at redis://noinfo:***@"
    ), line
    assert line.endswith(": batch chunked was not enqueued"), line
    withdrawn = [line for line in err.splitlines() if "not enqueued whole" in line]
    assert len(withdrawn) == 1, err
    assert "queued task(s) removed, 20 running aborted" in withdrawn[0]
    async with redis.asyncio.Redis(port=server.port) as client:
        # The running tasks' worker records their aborts; then only those results are left.
        async def settled() -> bool:
            return not [key async for key in client.scan_iter(match="arq:in-progress:*")]

        await eventually(settled, timeout_s=20, what="the running tasks to be aborted")
        left = await keys_of(client, "chunked")
        assert await client.zcard("coditect:queue") == 0
        assert await client.zcard("arq:abort") == 0
        raw = await client.mget(left)
    assert all(key.startswith(b"arq:result:coditect:chunked:") for key in left), left[:5]
    assert len(left) == 20
    assert all(json.loads(value)["r"]["__error__"] == "CancelledError" for value in raw)
    assert not any(key.startswith((BATCH_KEY_PREFIX.encode(), EVENTS_KEY_PREFIX.encode())) for key in left)
    assert worker.process is not None
    assert worker.process.returncode is None


# -- the ACL refuses PUBLISH ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["submit", "run"])
async def test_a_user_that_may_not_publish_enqueues_nothing(
    own_redis: OwnRedis, start_workers: StartWorkers, worker_env: dict[str, str], tmp_path: Path, command: str
) -> None:
    server = await own_redis()
    url = await add_user(server, "nopub", *LEAST_PRIVILEGE, "-publish")
    (worker,) = await start_workers(1, CODITECT_REDIS_URL=server.url)
    batch = batch_file(tmp_path, "quiet", 3, 10, chain=True)

    code, out, err = await coditect(
        command, str(batch), "--batch-id", "quiet", env={**worker_env, "CODITECT_REDIS_URL": url}
    )

    assert (code, out) == (2, "")
    assert error_line(err) == (
        f"coditect: error: Redis at redis://nopub:***@127.0.0.1:{server.port}/0 refused PUBLISH "
        "(its ACL does not let this user run it): batch quiet was not enqueued"
    )
    async with redis.asyncio.Redis(port=server.port) as client:
        assert await keys_of(client, "quiet") == []
        assert await client.zcard("coditect:queue") == 0
    assert not any("coditect:quiet:" in line for line in worker.lines)


# -- an evicting policy --------------------------------------------------------------------------

POLICY_WARNING = "Redis maxmemory-policy is allkeys-lru: a full Redis evicts keys"


async def test_an_evicting_policy_is_said_once_and_a_vanished_job_payload_is_recreated_from_its_batch(
    own_redis: OwnRedis, start_workers: StartWorkers, worker_env: dict[str, str], tmp_path: Path
) -> None:
    server = await own_redis(maxmemory="64mb", maxmemory_policy="allkeys-lru")
    env = {**worker_env, "CODITECT_REDIS_URL": server.url}
    batch = batch_file(tmp_path, "evicted", 3, 10, chain=True)

    code, out, err = await coditect("submit", str(batch), "--batch-id", "evicted", env=env)
    assert (code, out.strip()) == (0, "evicted")
    assert err.count(POLICY_WARNING) == 1, err
    async with redis.asyncio.Redis(port=server.port) as client:
        assert await client.delete("arq:job:coditect:evicted:t0") == 1  # as an eviction would

    (worker,) = await start_workers(1, CODITECT_REDIS_URL=server.url)
    code, out, err = await coditect("watch", "evicted", "--json", env=env)

    assert code == 0, err
    results = json.loads(out)
    assert [(r["task_id"], r["status"], r["attempts"]) for r in results] == [
        ("t0", "success", 1), ("t1", "success", 1), ("t2", "success", 1),
    ]  # fmt: skip
    assert sum(POLICY_WARNING in line for line in worker.lines) == 1, worker.lines


# -- least privilege -----------------------------------------------------------------------------

CANNOT_CHECK = "cannot check Redis's maxmemory-policy: this Redis user may not run INFO"


async def test_a_least_privilege_user_runs_workers_and_every_command(
    own_redis: OwnRedis, worker_env: dict[str, str], tmp_path: Path
) -> None:
    server = await own_redis()
    url = await add_user(server, "coditect", *LEAST_PRIVILEGE)
    async with redis.asyncio.Redis(port=server.port) as admin:
        await admin.config_set("requirepass", ADMIN_PASSWORD)  # nobody else gets in
    env = {**worker_env, "CODITECT_REDIS_URL": url}
    workers = [
        WorkerProcess(env, [sys.executable, "-m", "coditect", "worker"]),
        WorkerProcess(env, [ARQ_BIN, "coditect.jobs.WorkerSettings"]),
    ]
    try:
        for worker in workers:
            await worker.start()
        batch = batch_file(tmp_path, "graph", 4, 10, chain=True)

        code, out, err = await coditect("worker", "--check", env=env)
        assert (code, out.splitlines()[0]) == (0, "2 worker(s) alive"), err
        code, out, err = await coditect("run", str(batch), "--batch-id", "ran", "--json", env=env)
        assert code == 0, err
        assert [r["status"] for r in json.loads(out)] == ["success"] * 4
        assert err.count(CANNOT_CHECK) == 1, err
        code, out, err = await coditect("submit", str(batch), "--batch-id", "sent", env=env)
        assert (code, out.strip()) == (0, "sent"), err
        code, out, err = await coditect("watch", "sent", "--json", env=env)
        assert code == 0, err
        assert [r["task_id"] for r in json.loads(out)] == ["t0", "t1", "t2", "t3"]
        for args in (["status", "sent"], ["results", "sent", "--json"], ["cancel", "sent"], ["batches"]):
            code, out, err = await coditect(*args, env=env)
            assert code == 0, (args, err)
            assert err == "", (args, err)
        code, out, err = await coditect("events", "sent", "--json", env=env)
        assert code == 0, err
        assert json.loads(out.splitlines()[-1])["type"] == "batch.finished"
        code, out, err = await coditect("dead-letters", env=env)
        assert (code, out.strip()) == (0, "no dead letters"), err
    finally:
        for worker in workers:
            await worker.stop()
    for worker in workers:
        log = "\n".join(worker.lines)
        assert log.count(CANNOT_CHECK) == 1, log
        assert "redis error" not in log
        assert "Traceback" not in log


async def acl_denials(server: RedisServer, user: str, reason: str) -> int:
    """How many times Redis refused ``user`` a command (``reason`` command) or a channel (channel)."""
    async with redis.asyncio.Redis(port=server.port) as admin:
        entries = await admin.acl_log()
    return sum(int(e["count"]) for e in entries if e["username"] == user and e["reason"] == reason)


@pytest.mark.parametrize(
    ("user", "rules", "reason", "said"),
    [
        (
            "noeval",
            ("-evalsha", "-eval"),
            "command",
            "refused EVALSHA (its ACL does not let this user run it)",
        ),
        ("nochan", ("resetchannels",), "channel", "refused access to a channel (its ACL must let this user"),
    ],
    ids=["evalsha", "channels"],
)
async def test_a_command_the_acl_refuses_is_said_once_naming_it(
    own_redis: OwnRedis,
    start_workers: StartWorkers,
    user: str,
    rules: tuple[str, ...],
    reason: str,
    said: str,
) -> None:
    server = await own_redis()
    rule_list = [rule for rule in LEAST_PRIVILEGE if not (rule == "&coditect:*" and reason == "channel")]
    url = await add_user(server, user, *rule_list, *rules)
    (worker,) = await start_workers(1, CODITECT_REDIS_URL=url)

    async def refused_thrice() -> bool:
        return await acl_denials(server, user, reason) >= 3

    await eventually(refused_thrice, timeout_s=20, what=f"Redis to refuse {user} three times")
    assert worker.process is not None
    assert worker.process.returncode is None
    lines = [line for line in worker.lines if said in line]
    assert len(lines) == 1, worker.lines
    assert not any("redis error in worker loop" in line for line in worker.lines)
