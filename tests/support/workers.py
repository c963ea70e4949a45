"""Real worker processes: ``arq coditect.jobs.WorkerSettings`` (or ``coditect worker``) as subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

READY_LINE = "coditect worker ready"
ARQ_BIN = str(Path(sys.executable).with_name("arq"))


class WorkerProcess:
    """One worker subprocess; its log lines are collected, and ``ready`` is set once it takes jobs."""

    def __init__(
        self, env: Mapping[str, str], command: Sequence[str] | None = None, *, ready_line: str = READY_LINE
    ) -> None:
        self.env = dict(env)
        self.command = list(command or [ARQ_BIN, "coditect.jobs.WorkerSettings"])
        self.ready_line = ready_line
        self.lines: list[str] = []
        self.ready = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout_s: float = 20.0) -> WorkerProcess:
        self.process = await asyncio.create_subprocess_exec(
            *self.command, env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read())
        try:
            async with asyncio.timeout(timeout_s):
                await self.ready.wait()
        except TimeoutError:
            raise RuntimeError("worker did not become ready:\n" + "\n".join(self.lines[-30:])) from None
        return self

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if self.ready_line in line:
                self.ready.set()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            os.kill(self.process.pid, signum)

    async def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited in ``timeout_s``; returns the exit code."""
        if self.process is None:
            return 0
        self.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout_s):
                code = await self.process.wait()
        except TimeoutError:
            self.signal(signal.SIGKILL)
            code = await self.process.wait()
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> int:
        assert self.process is not None
        self.signal(signal.SIGKILL)
        code = await self.process.wait()
        if self._reader is not None:
            await self._reader
        return code
