"""A loopback TCP proxy that can cut every connection through it, for network fault tests.

``TcpProxy(target_port)`` listens on 127.0.0.1:<free port> and forwards each connection to
127.0.0.1:<target_port>. ``cut_all()`` resets every open connection at once (an RST on both
sides, as a dropped network path or a restarted load balancer does); ``start_cutting(every_s,
rounds)`` does that on a timer and stops by itself after ``rounds`` cuts. ``freeze_all()`` is the
quieter fault: every open connection stays open but nothing more crosses it, in either direction (a
network path that lost its state without telling anyone); new connections work.
``lose_replies_to(marker)`` loses less: the next request that contains ``marker`` reaches the server,
and nothing the server sends back on that connection arrives (the reply to a command that ran);
``cut_on(marker)`` resets the connection that carries the next request containing ``marker``, which
never reaches the server.
Loopback only.

It runs on the test's event loop: never block that loop (``Popen.wait()``) while it serves, or the
processes behind it stall on their Redis calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

__all__ = ["TcpProxy"]

LOOPBACK = "127.0.0.1"
CHUNK_BYTES = 65_536
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST, not a FIN


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side, the server's side and the two pumps."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    frozen: bool = False
    replies_lost: bool = False

    def reset(self) -> None:
        for writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            writer.transport.abort()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``; cuts connections on demand."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self.cut = 0
        self.cut_rounds = 0
        self.replies_lost = 0
        self._lose_replies_to: bytes | None = None
        self._cut_on: bytes | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._cutter: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._forward(reader, writer)
        finally:
            self._handlers.discard(handler)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.transport.abort()  # target down: the client sees its connection dropped
            return
        link = _Link(writer, upstream_writer)
        link.pumps = [
            asyncio.create_task(self._pump(reader, upstream_writer, link, request=True)),
            asyncio.create_task(self._pump(upstream_reader, writer, link, request=False)),
        ]
        self._links.add(link)
        try:
            await asyncio.wait(link.pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._links.discard(link)
            for pump in link.pumps:
                pump.cancel()
            await asyncio.gather(*link.pumps, return_exceptions=True)
            for side in (writer, upstream_writer):
                side.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, *, request: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK_BYTES):
                if request and self._cut_on is not None and self._cut_on in data:
                    self._cut_on = None
                    self.cut += 1
                    link.reset()
                    return
                if request and self._lose_replies_to is not None and self._lose_replies_to in data:
                    self._lose_replies_to = None
                    link.replies_lost = True
                    self.replies_lost += 1
                if link.frozen or (link.replies_lost and not request):
                    continue  # swallowed: the other side never hears of it
                writer.write(data)
                await writer.drain()

    def cut_all(self) -> int:
        """Reset every open connection; returns how many were cut."""
        links = list(self._links)
        for link in links:
            link.reset()
        self.cut += len(links)
        self.cut_rounds += 1
        return len(links)

    def freeze_all(self) -> int:
        """Silently stop forwarding on every open connection (no RST, no FIN); returns how many."""
        links = [link for link in self._links if not link.frozen]
        for link in links:
            link.frozen = True
        return len(links)

    def lose_replies_to(self, marker: bytes) -> None:
        """The next request containing ``marker`` goes through; its connection's replies never arrive."""
        self._lose_replies_to = marker

    def cut_on(self, marker: bytes) -> None:
        """Reset the connection of the next request containing ``marker``, before it reaches the server."""
        self._cut_on = marker

    def start_cutting(self, every_s: float, rounds: int) -> None:
        """Cut every connection every ``every_s`` seconds, ``rounds`` times, in the background."""
        if self._cutter is not None and not self._cutter.done():
            raise RuntimeError("already cutting")
        self._cutter = asyncio.create_task(self._cut_periodically(every_s, rounds))

    async def _cut_periodically(self, every_s: float, rounds: int) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for round_ in range(1, rounds + 1):
            await asyncio.sleep(max(0.0, start + round_ * every_s - loop.time()))
            self.cut_all()

    async def wait_cutting_done(self) -> None:
        if self._cutter is not None:
            await self._cutter

    async def close(self) -> None:
        """Stop cutting and listening; reset what is still open."""
        if self._cutter is not None:
            self._cutter.cancel()
            await asyncio.gather(self._cutter, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            for link in list(self._links):
                link.reset()
            await self._server.wait_closed()
            self._server = None
        if self._handlers:
            # Every handler ends once its sockets are reset; the timeout only guards against a bug here.
            await asyncio.wait(self._handlers, timeout=5.0)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
