"""Held connections (coditect.held) on a real Redis: replies, error replies, scripts that Redis
forgot, cancelled blocking reads, connections the server closed; and the protocol they write."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

import coditect.held as held
from coditect.held import HeldConnections, HeldScript
from coditect.models import ExecutionStatus

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    client = ArqRedis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose(close_connection_pool=True)


async def test_call_sends_commands_in_one_write_and_returns_every_reply(redis: ArqRedis) -> None:
    lines = HeldConnections(redis.connection_pool)
    assert await lines.call(("SET", "k", "v"), ("MGET", "k", "missing"), ("INCRBY", "n", 3)) == [
        b"OK",
        [b"v", None],
        3,
    ]
    await lines.close()


async def test_an_error_reply_is_raised_after_every_reply_is_read(redis: ArqRedis) -> None:
    lines = HeldConnections(redis.connection_pool)
    await redis.set("text", "x")
    with pytest.raises(ResponseError, match="not an integer"):
        await lines.call(("INCR", "text"), ("SET", "after", "1"))
    assert await redis.get("after") == b"1"  # the command after the error ran
    assert await lines.call(("GET", "after")) == [b"1"]  # and its reply did not stay on the line
    await lines.close()


async def test_a_script_redis_forgot_is_loaded_again(redis: ArqRedis) -> None:
    lines = HeldConnections(redis.connection_pool)
    script = redis.register_script("return ARGV[1] .. KEYS[1]")
    assert await lines.run(script, ["k"], ["a"]) == b"ak"
    await redis.script_flush()
    assert await lines.run(script, ["k"], ["b"]) == b"bk"
    await lines.close()


async def test_a_cancelled_blocking_read_leaves_no_reply_behind(redis: ArqRedis) -> None:
    lines = HeldConnections(redis.connection_pool)
    read = asyncio.create_task(lines.call(("XREAD", "BLOCK", 5000, "STREAMS", "s", "$")))
    await asyncio.sleep(0.1)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    await redis.xadd("s", {"f": "v"})  # would complete the cancelled read, were it still pending
    assert await lines.call(("PING",)) == [b"PONG"]
    await lines.close()


async def test_a_connection_closed_by_the_server_while_idle_is_replaced(
    redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = HeldConnections(redis.connection_pool)
    ((held_id,),) = [await lines.call(("CLIENT", "ID"))]
    await redis.client_kill_filter(_id=held_id)
    monkeypatch.setattr(held, "IDLE_CHECK_S", 0.0)
    await asyncio.sleep(0.01)
    assert await lines.call(("PING",)) == [b"PONG"]
    assert await lines.call(("CLIENT", "ID")) != [held_id]
    await lines.close()


async def test_close_gives_the_connections_back_to_the_pool(redis: ArqRedis) -> None:
    pool = redis.connection_pool
    lines = HeldConnections(pool)
    await asyncio.gather(lines.call(("PING",)), lines.call(("PING",)))
    assert len(pool._in_use_connections) == 2
    await lines.close()
    assert not pool._in_use_connections


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "a" * 40, 1, "q", 123, -4, 1.5, "", "é ü", b"\x00\xff", ExecutionStatus.SUCCESS),
        ("XREAD", "COUNT", 1000, "BLOCK", 200, "STREAMS", "coditect:events:b", "0-0"),
    ],
)
def test_packed_as_redis_py_packs(command: tuple[str | bytes | int | float, ...]) -> None:
    connection = Connection()
    expected = b"".join(connection.pack_commands([command, ("MGET", "x")]))
    assert held._packed([command, ("MGET", "x")]) == expected


@pytest.mark.parametrize("value", [True, None, ["a"]])
def test_packed_refuses_what_redis_py_refuses(value: object) -> None:
    with pytest.raises(DataError):
        held._packed([("SET", "k", value)])  # type: ignore[list-item]


async def test_replies_dropped_before_they_are_read_do_not_reach_the_next_call(redis: ArqRedis) -> None:
    lines = HeldConnections(redis.connection_pool)
    replies = await lines.send(("SET", "a", "1"), ("XREAD", "BLOCK", 5000, "STREAMS", "s", "$"), ("GET", "a"))
    assert await replies.next() == b"OK"
    await replies.drop()
    await redis.xadd("s", {"f": "v"})
    assert await lines.call(("GET", "a")) == [b"1"]
    await replies.drop()  # once more: nothing to do
    await lines.close()


async def test_a_script_sent_with_commands_after_it_is_loaded_again(redis: ArqRedis) -> None:
    lines = HeldConnections(redis.connection_pool)
    script = redis.register_script("return redis.call('INCR', KEYS[1])")
    await redis.script_flush()
    reply, replies = await lines.run_then(script, ["n"], [], ("GET", "n"))
    assert reply == 1
    assert await replies.next() == b"1"
    assert replies.left == 0
    await lines.close()


async def test_a_held_script_is_called_as_redis_py_calls_one(redis: ArqRedis) -> None:
    lines = HeldConnections(redis.connection_pool)
    script = HeldScript(lines, redis.register_script("return {KEYS[1], ARGV[1]}"))
    assert await script(keys=["k"], args=[7]) == [b"k", b"7"]
    await lines.close()


@pytest.mark.parametrize(
    ("options", "retries"),
    [
        ({}, False),
        ({"retry": Retry(NoBackoff(), 0)}, False),
        ({"retry": Retry(NoBackoff(), 3)}, True),
        ({"retry_on_timeout": True}, True),
        ({"retry_on_error": [RedisConnectionError]}, True),
    ],
)
async def test_a_pool_told_to_retry_commands_is_known_as_such(options: dict[str, Any], retries: bool) -> None:
    client = ArqRedis(**options)
    assert held.retries_commands(client.connection_pool) is retries
    await client.aclose()
