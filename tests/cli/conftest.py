"""CLI fixtures: the suite's own redis-server (never the machine's on 6379), flushed for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def cli_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("cli-redis"))  # fails clearly if redis-server is missing
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(cli_redis: RedisServer) -> str:
    cli_redis.flush()
    return cli_redis.url
