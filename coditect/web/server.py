"""Serving the dashboard with uvicorn on the caller's event loop, beside whatever else runs there
(an embedded run's workers, say). The caller handles signals: Ctrl-C must stop a run, not only
the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from coditect.errors import ConfigurationError
from coditect.web.app import create_app
from coditect.web.state import Dashboard

__all__ = ["DashboardServer"]

# Live streams never end on their own: after this, a stopping server closes them.
GRACEFUL_SHUTDOWN_S = 3.0
STOP_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the command that serves decides what a signal stops


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise ConfigurationError(f"cannot serve the dashboard on {host}:{port}: {err}") from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        why = err.strerror or str(err)
        raise ConfigurationError(f"cannot serve the dashboard on {host}:{port}: {why}") from err
    sock.setblocking(False)
    return sock


class DashboardServer:
    """``await start()`` binds (raising ``ConfigurationError`` if it cannot) and serves; ``await
    stop()`` ends the live streams and the server."""

    def __init__(self, dashboard: Dashboard, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.dashboard = dashboard
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> str:
        """Listen and serve; returns the dashboard's address."""
        sock = _listen(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            create_app(self.dashboard),
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="coditect-dashboard")
        return self.url

    async def stop(self) -> None:
        self.dashboard.closing.set()
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, STOP_TIMEOUT_S)
        except TimeoutError:
            self._task.cancel()
        self._server = self._task = None
