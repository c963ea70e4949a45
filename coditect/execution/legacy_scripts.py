"""Legacy script mode: run ``execute_<agent>.py`` as an isolated subprocess, task JSON on stdin."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
import signal
import sys
import time
from asyncio.subprocess import PIPE, Process
from dataclasses import dataclass
from pathlib import Path

from coditect.errors import ConfigurationError, ScriptError
from coditect.models import AGENT_NAME_PATTERN, SCRIPT_NAME_PATTERN

__all__ = ["ScriptOutput", "ScriptRunner"]

logger = logging.getLogger(__name__)

_AGENT_NAME = re.compile(AGENT_NAME_PATTERN)
_SCRIPT_NAME = re.compile(SCRIPT_NAME_PATTERN)
_CHUNK_BYTES = 65_536
# After SIGKILL the pipes close at once, unless a process that left the group (setsid) holds them.
_REAP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class ScriptOutput:
    """What a script that exited with code 0 wrote, and how long it took."""

    stdout: str
    stderr: str
    exit_code: int
    duration_s: float


class ScriptRunner:
    """Runs agent scripts from one folder: no shell, a scrubbed environment, capped output.

    Each run gets its own process group, which is killed on timeout, on cancellation and after
    the script exits, so no grandchild outlives the run.
    """

    def __init__(self, scripts_dir: Path, *, output_limit_bytes: int = 1_048_576) -> None:
        if output_limit_bytes < 1:
            raise ValueError(f"output_limit_bytes must be at least 1, got {output_limit_bytes}")
        self.scripts_dir = Path(scripts_dir)
        self.output_limit_bytes = output_limit_bytes

    def resolve(self, agent: str, script: str | None = None) -> Path:
        """The real path of the agent's script; ``ConfigurationError`` if missing or unsafe."""
        base = self.scripts_dir.resolve()
        name = f"execute_{agent}.py" if script is None else script
        candidate = base / name
        if not _AGENT_NAME.fullmatch(agent) or (script is not None and not _SCRIPT_NAME.fullmatch(script)):
            raise ConfigurationError(
                f"unsafe script name {name!r} for agent {agent!r} (it would be {candidate}): "
                "agents must match [A-Za-z0-9_-]{1,64} and scripts be plain file names like tool_name.py"
            )
        try:
            path = candidate.resolve()
        except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop on Python 3.11
            raise ConfigurationError(f"cannot resolve script {candidate}: {err}") from err
        if not path.is_relative_to(base):
            raise ConfigurationError(f"script {candidate} resolves to {path}, outside the scripts folder")
        if not path.is_file():
            raise ConfigurationError(f"script not found: {candidate}")
        return path

    async def run(
        self, agent: str, payload: str, *, timeout_s: float, script: str | None = None
    ) -> ScriptOutput:
        """Run the script with ``payload`` on stdin. ``ScriptError`` on a non-zero exit, ``TimeoutError``."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        path = self.resolve(agent, script)
        data = payload.encode("utf-8")
        logger.debug(
            "running %s for agent %s (%d payload bytes, timeout %.1f s)", path, agent, len(data), timeout_s
        )
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            str(path),
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
            cwd=self.scripts_dir.resolve(),
            env=_script_env(),
            start_new_session=True,
            close_fds=True,
        )
        try:
            async with asyncio.timeout(timeout_s):
                stdout, stderr, exit_code = await self._communicate(proc, data, path.name)
        except TimeoutError as err:
            logger.warning(
                "script %s (pid %d) timed out after %.1f s; killing it", path.name, proc.pid, timeout_s
            )
            raise TimeoutError(f"script {path.name} timed out after {timeout_s:g} s") from err
        finally:
            await _kill_and_reap(proc)
        duration_s = time.monotonic() - started
        logger.debug("script %s exited with code %d after %.2f s", path.name, exit_code, duration_s)
        if exit_code != 0:
            raise ScriptError(path.name, exit_code, stderr)
        return ScriptOutput(stdout=stdout, stderr=stderr, exit_code=exit_code, duration_s=duration_s)

    async def _communicate(self, proc: Process, data: bytes, name: str) -> tuple[str, str, int]:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        # Write and read at once: a script that writes before it reads would otherwise deadlock the pipes.
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_feed(proc.stdin, data))
            out = tg.create_task(_read_capped(proc.stdout, self.output_limit_bytes))
            err = tg.create_task(_read_capped(proc.stderr, self.output_limit_bytes))
        exit_code = await proc.wait()
        return _decode(name, "stdout", *out.result()), _decode(name, "stderr", *err.result()), exit_code


def _script_env() -> dict[str, str]:
    """PATH, HOME and a UTF-8 locale: nothing else of ours (API keys above all) reaches a script."""
    env = {"PATH": os.environ.get("PATH") or os.defpath, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
    if home := os.environ.get("HOME"):
        env["HOME"] = home
    return env


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    # A script may exit without reading its input; its exit code tells the story, not a broken pipe.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(data)
        await stdin.drain()
    stdin.close()


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, int]:
    """Read to EOF, keeping the first ``limit`` bytes and counting the rest, so the writer never blocks."""
    kept = bytearray()
    dropped = 0
    while chunk := await stream.read(_CHUNK_BYTES):
        room = max(limit - len(kept), 0)
        kept += chunk[:room]
        dropped += max(len(chunk) - room, 0)
    return bytes(kept), dropped


def _decode(name: str, stream: str, kept: bytes, dropped: int) -> str:
    if not dropped:
        return kept.decode("utf-8", errors="replace")
    logger.warning(
        "script %s wrote %d bytes to %s; kept the first %d", name, len(kept) + dropped, stream, len(kept)
    )
    # The cut can split a multi-byte character: drop that partial tail instead of adding U+FFFD.
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(kept, final=False)


async def _kill_and_reap(proc: Process) -> None:
    """SIGKILL the script's process group (its pgid is its pid) and wait until the script is reaped."""
    # After a clean exit this only hits leftover grandchildren. The group id cannot be reused while
    # any member lives, and the pid itself was reaped only moments earlier.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        async with asyncio.timeout(_REAP_GRACE_S):
            # Drain first: asyncio's wait() returns only once the pipes are closed, and a paused pipe
            # (its buffer full after a cancelled read) would never notice that they are.
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    await _read_capped(stream, 0)
            await proc.wait()
    except TimeoutError:
        logger.error(
            "script pid %d was killed but its pipes are still open after %.0f s", proc.pid, _REAP_GRACE_S
        )
