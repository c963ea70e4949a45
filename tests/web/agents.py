"""Python agents for the dashboard tests (``{"mode": "python", "entrypoint": "tests.web.agents:..."}``).

A gated agent waits until the test opens its gate (an LPUSH to ``test:gate:<task id>`` on the Redis of
``CODITECT_REDIS_URL``, for worker processes; ``local_gate(task id).set()`` for the embedded workers in
the test's own process), so a test decides when each task ends instead of sleeping.
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio

from coditect.execution.context import AgentContext
from coditect.models import AgentTask

GATE_PREFIX = "test:gate:"
GATE_TIMEOUT_S = 60


async def _pass_gate(task: AgentTask) -> None:
    async with redis.asyncio.Redis.from_url(os.environ["CODITECT_REDIS_URL"]) as client:
        opened = await client.blpop([GATE_PREFIX + task.id], timeout=GATE_TIMEOUT_S)
    if opened is None:
        raise RuntimeError(f"the test never opened the gate of {task.id}")


async def gated(task: AgentTask, ctx: AgentContext) -> str:
    """Answers once its gate opens."""
    await _pass_gate(task)
    return f"through the gate: {task.title}"


async def gated_planner(task: AgentTask, ctx: AgentContext) -> str:
    """Once its gate opens, delegates two parts of its task (titled after it) to the writer."""
    await _pass_gate(task)
    parts = [AgentTask(title=f"{task.title} (part {n})", agent="writer") for n in (1, 2)]
    results = await ctx.delegate(parts)
    return " | ".join(f"{result.task_id}={result.status}" for result in results)


_LOCAL_GATES: dict[str, asyncio.Event] = {}


def local_gate(task_id: str) -> asyncio.Event:
    return _LOCAL_GATES.setdefault(task_id, asyncio.Event())


def close_local_gates() -> None:
    _LOCAL_GATES.clear()


async def locally_gated(task: AgentTask, ctx: AgentContext) -> str:
    """Answers once the test sets ``local_gate(task.id)`` (embedded workers only)."""
    await asyncio.wait_for(local_gate(task.id).wait(), GATE_TIMEOUT_S)
    return f"through the local gate: {task.title}"


async def failing(task: AgentTask, ctx: AgentContext) -> str:
    raise RuntimeError(f"failed on purpose: {task.title}")
