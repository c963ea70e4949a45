"""coditect's stand-in for the conftest.py of ARQ's own test suite (see ``scripts/arq-reference``).

``scripts/arq-reference`` puts this file over the one in ARQ's sdist, so that ARQ's tests run, under
the fixture names they use, against coditect's worker instead of ARQ's. What each fixture gives:

- ``test_redis_host``/``test_redis_port``/``test_redis_settings``: the redis-server the script
  started (``ARQ_REFERENCE_REDIS_PORT``), instead of a testcontainers one. Never port 6379.
- ``arq_redis``, ``arq_redis_retry``, ``create_pool``: pools that speak coditect's JSON jobs
  (ARQ's tests build them without a serializer, i.e. with pickle); ``arq_redis_msgpack`` as ARQ's.
- ``worker``/``worker_retry``: factories of ``CoditectWorker`` with ARQ's test defaults (burst,
  ``poll_delay=0``, ``max_jobs=10``) and the JSON pair unless the test passes a serializer.
- Tests that build ``Worker(...)``, call ``run_worker``/``create_worker`` or ``create_pool``
  themselves get the same worker class and JSON pools.
- ``loop``, ``cancel_remaining_task``, ``env``: as ARQ's, on pytest-asyncio's own loop.

``ARQ_REFERENCE_WORKER`` picks the worker: ``coditect`` (the default), ``arq`` (ARQ's own Worker and
pickle: the suite as ARQ runs it, which shows this harness is sound) or ``arq-json`` (ARQ's Worker
with coditect's JSON pair: which differences JSON alone explains).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import arq.worker
import msgpack
import pytest
import redis.asyncio.connection
import redis.exceptions
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, get_kwargs
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from coditect.engine.worker import CoditectWorker
from coditect.serialization import job_deserializer, job_serializer

SHARED_REDIS_PORT = 6379
VARIANT = os.environ.get("ARQ_REFERENCE_WORKER", "coditect")
if VARIANT not in ("coditect", "arq", "arq-json"):
    raise pytest.UsageError(f"ARQ_REFERENCE_WORKER must be coditect, arq or arq-json, not {VARIANT!r}")
SERIALIZERS: dict[str, Any] = (
    {} if VARIANT == "arq" else {"job_serializer": job_serializer, "job_deserializer": job_deserializer}
)
BASE: type[Worker] = CoditectWorker if VARIANT == "coditect" else Worker


class ReferenceWorker(BASE):  # type: ignore[valid-type,misc]
    """The worker under test, with the variant's serializer pair unless a test passes its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**SERIALIZERS, **kwargs})


# ARQ's get_kwargs reads the parameters of whatever arq.worker.Worker is: keep ARQ's.
ReferenceWorker.__signature__ = inspect.signature(Worker)  # type: ignore[attr-defined]


async def reference_create_pool(settings: RedisSettings | None = None, *args: Any, **kwargs: Any) -> ArqRedis:
    return await create_pool(settings, *args, **{**SERIALIZERS, **kwargs})


def reference_create_worker(settings_cls: Any, **kwargs: Any) -> Worker:
    return ReferenceWorker(**{**get_kwargs(settings_cls), **kwargs})


# -- Redis ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _never_the_shared_redis() -> Iterator[None]:
    """Refuse any connection to port 6379 (a default RedisSettings() would dial it)."""
    original = redis.asyncio.connection.Connection._connect

    async def connect(self: redis.asyncio.connection.Connection) -> None:
        if self.port == SHARED_REDIS_PORT:
            raise RuntimeError("the ARQ reference run never connects to port 6379")
        await original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redis.asyncio.connection.Connection, "_connect", connect)
        yield


@pytest.fixture(scope="session")
def redis_version() -> str:
    return "local"


@pytest.fixture(scope="session")
def test_redis_host() -> str:
    return "127.0.0.1"


@pytest.fixture(scope="session")
def test_redis_port() -> int:
    port = int(os.environ.get("ARQ_REFERENCE_REDIS_PORT", "0"))
    if not port or port == SHARED_REDIS_PORT:
        raise pytest.UsageError("set ARQ_REFERENCE_REDIS_PORT to a redis-server of the run's own")
    return port


@pytest.fixture(scope="session")
def test_redis_settings(test_redis_host: str, test_redis_port: int) -> RedisSettings:
    return RedisSettings(host=test_redis_host, port=test_redis_port)


async def _flushed_pool(host: str, port: int, **options: Any) -> ArqRedis:
    pool = ArqRedis(host=host, port=port, encoding="utf-8", **options)
    await pool.flushall()
    return pool


@pytest.fixture
async def arq_redis(test_redis_host: str, test_redis_port: int) -> AsyncIterator[ArqRedis]:
    pool = await _flushed_pool(test_redis_host, test_redis_port, **SERIALIZERS)
    yield pool
    await pool.aclose(close_connection_pool=True)


@pytest.fixture
async def arq_redis_msgpack(test_redis_host: str, test_redis_port: int) -> AsyncIterator[ArqRedis]:
    pool = await _flushed_pool(
        test_redis_host,
        test_redis_port,
        job_serializer=msgpack.packb,
        job_deserializer=functools.partial(msgpack.unpackb, raw=False),
    )
    yield pool
    await pool.aclose(close_connection_pool=True)


@pytest.fixture
async def arq_redis_retry(test_redis_host: str, test_redis_port: int) -> AsyncIterator[ArqRedis]:
    pool = await _flushed_pool(
        test_redis_host,
        test_redis_port,
        retry=Retry(backoff=NoBackoff(), retries=3),
        retry_on_timeout=True,
        retry_on_error=[redis.exceptions.ConnectionError],
        **SERIALIZERS,
    )
    yield pool
    await pool.aclose(close_connection_pool=True)


@pytest.fixture(name="create_pool")
async def fix_create_pool() -> AsyncIterator[Callable[..., Awaitable[ArqRedis]]]:
    pools: list[ArqRedis] = []

    async def create(settings: RedisSettings | None = None, *args: Any, **kwargs: Any) -> ArqRedis:
        pool = await reference_create_pool(settings, *args, **kwargs)
        pools.append(pool)
        return pool

    yield create
    await asyncio.gather(*(pool.aclose(close_connection_pool=True) for pool in pools))


# -- workers --------------------------------------------------------------------------------------


def _worker_factory(default_pool: ArqRedis, built: list[Worker]) -> Callable[..., Worker]:
    def create(
        functions: Any = (),
        burst: bool = True,
        poll_delay: float = 0,
        max_jobs: int = 10,
        arq_redis: ArqRedis = default_pool,
        **kwargs: Any,
    ) -> Worker:
        worker = ReferenceWorker(
            functions=list(functions),
            redis_pool=arq_redis,
            burst=burst,
            poll_delay=poll_delay,
            max_jobs=max_jobs,
            **kwargs,
        )
        built.append(worker)
        return worker

    return create


@pytest.fixture
async def worker(arq_redis: ArqRedis) -> AsyncIterator[Callable[..., Worker]]:
    built: list[Worker] = []
    yield _worker_factory(arq_redis, built)
    if built:  # ARQ's fixture closes the last worker it built
        await built[-1].close()


@pytest.fixture
async def worker_retry(arq_redis_retry: ArqRedis) -> AsyncIterator[Callable[..., Worker]]:
    built: list[Worker] = []
    yield _worker_factory(arq_redis_retry, built)
    if built:
        await built[-1].close()


@pytest.fixture(autouse=True)
def _direct_constructions(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that build a Worker, run_worker(...) or create_pool(...) themselves get ours too."""
    monkeypatch.setattr(arq.worker, "Worker", ReferenceWorker)
    monkeypatch.setattr(arq.worker, "create_worker", reference_create_worker)
    module = request.module
    if getattr(module, "Worker", None) is Worker:
        monkeypatch.setattr(module, "Worker", ReferenceWorker)
    if getattr(module, "create_pool", None) is create_pool:
        monkeypatch.setattr(module, "create_pool", reference_create_pool)


# -- the event loop, leftovers, environment -------------------------------------------------------


@pytest.fixture
async def loop() -> asyncio.AbstractEventLoop:
    """pytest-asyncio's loop for this test (ARQ's conftest takes it from the old event_loop fixture)."""
    return asyncio.get_running_loop()


@pytest.fixture(name="cancel_remaining_task")
def fix_cancel_remaining_task(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    async def cancel_remaining_task() -> None:
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks(loop) if task is not current]
        for task in others:
            task.cancel()
        if others:
            print(f"Cancelled {len(others)} ongoing tasks", file=sys.stderr)
            await asyncio.gather(*others, return_exceptions=True)

    yield
    loop.run_until_complete(cancel_remaining_task())


class SetEnv:
    """Environment variables set by a test, removed after it."""

    def __init__(self) -> None:
        self.envars: set[str] = set()

    def set(self, name: str, value: str) -> None:
        self.envars.add(name)
        os.environ[name] = value

    def clear(self) -> None:
        for name in self.envars:
            os.environ.pop(name)


@pytest.fixture
def env() -> Iterator[SetEnv]:
    setenv = SetEnv()
    yield setenv
    setenv.clear()
