"""Helpers shared by the fault tests: bounded polling, Redis inspection, script agents with a ledger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis.asyncio

from coditect.keys import split_job_id

_T = TypeVar("_T")

IN_PROGRESS = "arq:in-progress:"


async def eventually(
    probe: Callable[[], Awaitable[_T | None]], *, timeout_s: float, what: str, interval_s: float = 0.02
) -> _T:
    """Poll ``probe`` until it returns something other than None/False/empty; fail after ``timeout_s``.

    For states that no event announces (keys in Redis, a process's exit, lines in a file).
    """
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / interval_s) + 2):
        value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def pid_of_token(token: bytes | str) -> int:
    """The pid in a worker's lease token (``host:pid:random``)."""
    text = token.decode() if isinstance(token, bytes) else token
    return int(text.rsplit(":", 2)[-2])


async def held_by(client: redis.asyncio.Redis, pid: int) -> set[str]:
    """Task ids whose lease the worker process ``pid`` holds right now."""
    held: set[str] = set()
    async for key in client.scan_iter(match=IN_PROGRESS + "*", count=1000):
        token = await client.get(key)
        parts = split_job_id(key.decode()[len(IN_PROGRESS) :])
        if token is not None and parts is not None and pid_of_token(token) == pid:
            held.add(parts[1])
    return held


async def leftovers(client: redis.asyncio.Redis, queue_name: str = "coditect:queue") -> dict[str, int]:
    """What a finished batch must not leave behind: queued jobs, leases, job payloads, try counters."""
    counts = {
        "queued": int(await client.zcard(queue_name)),
        "leases": int(await client.zcard(queue_name + ":leases")),
    }
    for name, pattern in (
        ("in_progress", "arq:in-progress:*"),
        ("jobs", "arq:job:*"),
        ("tries", "arq:retry:*"),
    ):
        counts[name] = len([key async for key in client.scan_iter(match=pattern, count=1000)])
    return counts


NO_LEFTOVERS = {"queued": 0, "leases": 0, "in_progress": 0, "jobs": 0, "tries": 0}


@dataclass(frozen=True)
class ScriptAgents:
    """A scripts folder and an agents file whose script agents append ``<task id> <pid>`` to a ledger."""

    scripts_dir: Path
    agents_file: Path
    ledger: Path

    @property
    def env(self) -> dict[str, str]:
        return {"CODITECT_SCRIPTS_DIR": str(self.scripts_dir), "CODITECT_AGENTS_FILE": str(self.agents_file)}

    def entries(self) -> list[tuple[str, int]]:
        """(task id, script pid) of every run that started, in order."""
        if not self.ledger.exists():
            return []
        lines = self.ledger.read_text().split("\n")
        return [(task_id, int(pid)) for task_id, pid in (line.split() for line in lines if line)]


def script_agents(folder: Path, sleep_s: float) -> ScriptAgents:
    """An agent ``sleeper``: logs its start to the ledger, sleeps ``sleep_s``, prints its task's title."""
    scripts = folder / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    ledger = folder / "ledger.txt"
    (scripts / "execute_sleeper.py").write_text(
        "import json, os, sys, time\n"
        "task = json.load(sys.stdin)\n"
        f"with open({str(ledger)!r}, 'a') as ledger:\n"
        "    ledger.write(f\"{task['id']} {os.getpid()}\\n\")\n"
        f"time.sleep({sleep_s!r})\n"
        "print(task['title'])\n"
    )
    agents = folder / "agents.json"
    agents.write_text(json.dumps({"agents": [{"name": "sleeper", "mode": "script", "timeout_s": 600}]}))
    return ScriptAgents(scripts, agents, ledger)


async def run_command(*args: str, env: dict[str, str], timeout_s: float = 30.0) -> tuple[int, bytes, bytes]:
    """Run a command to its end: (exit code, stdout, stderr). Killed if it outlives ``timeout_s``."""
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


def kill_groups(pids: list[int]) -> None:
    """SIGKILL the process groups of ``pids`` (script runs lead their own group), if still there."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (killed and reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has stopped running; only its exit status is left
