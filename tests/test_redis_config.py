"""What coditect checks of Redis's configuration (``coditect.redis_config``); the same against a real
redis-server with an evicting policy and a least-privilege ACL: ``tests/integration/test_redis_config.py``."""

from __future__ import annotations

import logging

import pytest
from arq.connections import ArqRedis

from coditect.redis_config import NOEVICTION, PolicyCheck, ServerInfo, describe_server, human_bytes

MB = 1024 * 1024


def info(policy: str = NOEVICTION, used: int = 2 * MB, maximum: int = 10 * MB) -> ServerInfo:
    return ServerInfo(version="7.0.15", clients=3, used_memory=used, maxmemory=maximum, policy=policy)


@pytest.mark.parametrize(
    ("server", "room"),
    [
        (info(), 8 * MB),
        (info(used=12 * MB), 0),
        (info(maximum=0), None),
        (info("allkeys-lru"), None),
        (info("volatile-ttl"), None),
    ],
)
def test_room_is_what_may_be_written_before_redis_refuses_writes(
    server: ServerInfo, room: int | None
) -> None:
    assert server.room_bytes == room


@pytest.mark.parametrize(
    ("count", "shown"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KB"), (12 * MB, "12.0 MB"), (3 * MB * 1024**2, "3072.0 GB")],
)
def test_human_bytes(count: int, shown: str) -> None:
    assert human_bytes(count) == shown


@pytest.mark.parametrize(
    ("server", "said"),
    [
        (None, "worker cannot check Redis's maxmemory-policy: this Redis user may not run INFO"),
        (info("allkeys-lru"), "Redis maxmemory-policy is allkeys-lru: a full Redis evicts keys"),
        (info(), None),
    ],
    ids=["refused", "evicting", "noeviction"],
)
def test_the_policy_is_said_once(
    caplog: pytest.LogCaptureFixture, server: ServerInfo | None, said: str | None
) -> None:
    check = PolicyCheck("worker")

    check.check(server)
    check.check(server)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [line[: len(said)] for line in warnings] == ([said] if said else [])


async def test_a_server_without_info_is_described_by_what_it_says_and_never_warned_about(
    pool: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    await pool.set("k", "v")
    lines: list[str] = []

    server = await describe_server(pool, lines.append, PolicyCheck("worker"))

    assert server is not None  # fakeredis (the embedded backend) has no INFO: no limit, no eviction
    assert (server.policy, server.room_bytes) == (NOEVICTION, None)
    assert lines == ["redis_version=? mem_usage=0 B clients_connected=0 db_keys=1"]
    assert caplog.records == []
