"""Shared fixtures: a clean environment for every test (a developer's CODITECT_* never leaks in), no
secrets registered by an earlier test, and the in-process Redis that unit tests run on."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from unittest import mock

import pytest
from arq.connections import ArqRedis

import coditect.secrets
from coditect.settings import Settings
from tests.support.fake_backend import FakeBackend
from tests.support.redis_server import RedisServer

# ARQ's own test suite's conftest, used by scripts/arq-reference only (tests/integration runs it).
collect_ignore = ["arq_reference"]


@pytest.fixture(autouse=True)
def clean_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CODITECT_", "ANTHROPIC_", "OPENAI_"))}
    with mock.patch.dict(os.environ, keep, clear=True):
        # A .env in the working directory must not leak into tests either.
        cwd = os.getcwd()
        os.chdir(tmp_path_factory.mktemp("cwd"))
        try:
            yield
        finally:
            os.chdir(cwd)


@pytest.fixture(autouse=True)
def fresh_secret_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no registered secrets: one test's keys must not mask another's text."""
    monkeypatch.setattr(coditect.secrets, "_REGISTRY", coditect.secrets._Registry())


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    """An in-process Redis (fakeredis) with pools and workers on it, all closed after the test."""
    async with FakeBackend() as backend:
        yield backend


@pytest.fixture
def pool(backend: FakeBackend) -> ArqRedis:
    return backend.pool()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The suite's own redis-server on a free port (never the machine's on 6379); started once."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url
