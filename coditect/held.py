"""Connections kept out of redis-py's pool for the hot paths: the client submitting and following a
batch, the worker claiming and finishing jobs.

redis-py checks a connection each time it leaves the pool (a read under a zero timeout: a turn of
the event loop and a cancelled future, ~30 us) and wraps each command and pipeline in objects of its
own; a one-task batch took three such round trips, and a worker's script call ~100 us of CPU. A held
connection is checked when it leaves the pool, then again only after it sat idle ``IDLE_CHECK_S``.
It stays clean by construction: a call reads every reply it asked for, and whatever interrupts a
call (a lost connection, a timeout, a cancellation) disconnects it, so the next call connects again.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError

__all__ = ["IDLE_CHECK_S", "Command", "HeldConnections", "HeldScript", "Replies", "retries_commands"]

# A connection idle longer than this is checked (as the pool would) before its next call.
IDLE_CHECK_S = 1.0

Command = Sequence[str | bytes | int | float]


class HeldConnections:
    """A few connections taken from ``pool`` and reused for sequences of calls (see the module)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._idle: list[tuple[AbstractConnection, float]] = []
        # redis-py 5.3 deprecates the command name that 5.0-5.2 require.
        needs_name = inspect.signature(pool.get_connection).parameters["command_name"].default is not None
        self._checkout_args: tuple[str, ...] = ("_",) if needs_name else ()

    async def call(self, *commands: Command) -> list[Any]:
        """The replies to ``commands``, sent in one write (a pipeline without its objects). An error
        reply is raised once every reply has been read."""
        replies = await self.send(*commands)
        read: list[Any] = []
        while replies.left:
            try:
                read.append(await replies.next())
            except ResponseError as err:
                read.append(err)
        for reply in read:
            if isinstance(reply, ResponseError):
                raise reply
        return read

    async def send(self, *commands: Command) -> Replies:
        """Send ``commands`` in one write; their replies are read one by one from what this returns,
        which holds the connection until every reply is read or it is dropped."""
        connection = await self._take()
        try:
            await connection.send_packed_command(_packed(commands))
        except BaseException:
            await connection.disconnect(nowait=True)
            self._give_back(connection)
            raise
        return Replies(self, connection, len(commands))

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``script`` with ``keys`` and ``args`` (EVALSHA; loaded first if Redis does not have it)."""
        reply, _ = await self.run_then(script, keys, args)
        return reply

    async def run_then(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any], *then: Command
    ) -> tuple[Any, Replies]:
        """``run``, with the commands ``then`` sent in the same write (Redis runs them right after the
        script): the script's reply, and the replies to ``then``, to read or drop."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        replies = await self.send(command, *then)
        try:
            try:
                return await replies.next(), replies
            except NoScriptError:
                await replies.drop()
            await script.registered_client.script_load(script.script)
            replies = await self.send(command, *then)
            return await replies.next(), replies
        except BaseException:
            await replies.drop()
            raise

    async def close(self) -> None:
        """Give the connections back to the pool."""
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            await self._pool.release(connection)

    def _give_back(self, connection: AbstractConnection) -> None:
        self._idle.append((connection, time.monotonic()))

    async def _take(self) -> AbstractConnection:
        if not self._idle:
            connection: AbstractConnection = await self._pool.get_connection(*self._checkout_args)
            return connection
        connection, since = self._idle.pop()
        if time.monotonic() - since > IDLE_CHECK_S:
            await _check(connection)
        return connection


class HeldScript:
    """``script`` called as redis-py's ``AsyncScript`` is (``keys=``, ``args=``), on held connections."""

    __slots__ = ("_held", "script")

    def __init__(self, held: HeldConnections, script: AsyncScript) -> None:
        self._held = held
        self.script = script

    async def __call__(self, *, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._held.run(self.script, keys, args)


class Replies:
    """The replies still to come to commands sent on a held connection (``HeldConnections.send``)."""

    def __init__(self, owner: HeldConnections, connection: AbstractConnection, count: int) -> None:
        self._owner = owner
        self._connection: AbstractConnection | None = connection
        self.left = count

    async def next(self) -> Any:
        """The next reply; an error reply is raised (the replies after it can still be read)."""
        connection = self._connection
        if connection is None:
            raise RuntimeError("no reply left to read")
        try:
            reply = await connection.read_response()
        except ResponseError:
            self._read_one()
            raise
        except BaseException:
            await self.drop()
            raise
        self._read_one()
        return reply

    async def drop(self) -> None:
        """Give the connection back, disconnected first if replies are still to come (its next user
        would read them). Does nothing once every reply has been read."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self.left:
            await connection.disconnect(nowait=True)
        self._owner._give_back(connection)

    def _read_one(self) -> None:
        self.left -= 1
        if not self.left and self._connection is not None:
            self._owner._give_back(self._connection)
            self._connection = None


def retries_commands(pool: ConnectionPool) -> bool:
    """Whether redis-py retries a failed command on ``pool``'s connections (``retry`` with retries,
    ``retry_on_timeout``, ``retry_on_error``). Held connections do not: such a pool's calls keep
    redis-py's own path, so that the retries its owner asked for still happen."""
    kwargs = pool.connection_kwargs
    retry = kwargs.get("retry")
    return bool(
        kwargs.get("retry_on_timeout")
        or kwargs.get("retry_on_error")
        or (retry is not None and getattr(retry, "_retries", 0) > 0)
    )


def _packed(commands: Sequence[Command]) -> bytes:
    """``commands`` in Redis's protocol, as redis-py's ``pack_commands`` writes them, by hiredis in C
    (a third of the time of packing in Python; a batch's submit is tens of thousands of arguments)."""
    try:
        # hiredis types its argument as a 1-tuple; it takes any number of arguments.
        return b"".join([hiredis.pack_command(tuple(command)) for command in commands])  # type: ignore[arg-type]
    except TypeError:  # hiredis refuses what redis-py refuses: None, bool, lists
        bad = next(
            arg
            for command in commands
            for arg in command
            if isinstance(arg, bool) or not isinstance(arg, str | bytes | int | float)
        )
        raise DataError(
            f"cannot send {type(bad).__name__} {bad!r} to Redis: only str, bytes, int, float"
        ) from None


async def _check(connection: AbstractConnection) -> None:
    """What the pool checks: a connection with something to read, or closed by the server, is
    dropped (the next call connects again)."""
    if not connection.is_connected:
        return
    try:
        stale = await connection.can_read_destructive()  # type: ignore[no-untyped-call]  # redis-py's
    except (RedisConnectionError, OSError):
        stale = True
    if stale:
        await connection.disconnect()
