"""Python agents for the tests (``{"mode": "python", "entrypoint": "tests.support.python_agents:..."}``)."""

from __future__ import annotations

from coditect.execution.context import AgentContext
from coditect.models import AgentTask


async def planner(task: AgentTask, ctx: AgentContext) -> str:
    """Delegates two parts of its task to the writer and joins what they wrote."""
    parts = [AgentTask(title=f"{task.title}: part {n}", agent="writer") for n in (1, 2)]
    results = await ctx.delegate(parts)
    return " | ".join(f"{result.task_id}={result.status}" for result in results)


async def planner_with_llm(task: AgentTask, ctx: AgentContext) -> dict[str, object]:
    """Plans with the model, then delegates one named child."""
    plan = await ctx.llm(f"Plan: {task.title}")
    child = await ctx.delegate(AgentTask(id="draft", title=plan.text[:100], agent="writer"))
    return {"output": f"{child.task_id}:{child.status}", "usage": {"output_tokens": 1}}


async def recursive(task: AgentTask, ctx: AgentContext) -> str:
    """Delegates to itself until refused; says how deep it got and what stopped it."""
    child = await ctx.delegate(AgentTask(title="deeper", agent=task.agent))
    if child.status == "success":
        return child.output
    return f"depth {ctx.depth}: {child.error}"


async def not_a_string(task: AgentTask, ctx: AgentContext) -> int:
    return 42


def not_async(task: AgentTask, ctx: AgentContext) -> str:
    return "sync"


async def sleeper(task: AgentTask, ctx: AgentContext) -> str:
    """Sleeps ``metadata.seconds`` (a slow task without a slow provider); with ``metadata.ledger``, first
    appends ``<task id> <pid>`` to that file, so a test can count the starts and where they ran."""
    import asyncio
    import os

    ledger = task.metadata.get("ledger")
    if isinstance(ledger, str):
        with open(ledger, "a") as file:  # noqa: ASYNC230  # one short line, in a test agent
            file.write(f"{task.id} {os.getpid()}\n")
    seconds = task.metadata.get("seconds", 0)
    await asyncio.sleep(float(seconds) if isinstance(seconds, int | float) else 0.0)
    return f"slept {seconds}"


async def slow_planner(task: AgentTask, ctx: AgentContext) -> str:
    """Records its start in the ledger, then delegates two sleepers with its own metadata."""
    import os

    ledger = task.metadata.get("ledger")
    if isinstance(ledger, str):
        with open(ledger, "a") as file:  # noqa: ASYNC230
            file.write(f"{task.id} {os.getpid()}\n")
    children = [AgentTask(title=f"part {n}", agent="sleeper", metadata=task.metadata) for n in (1, 2)]
    results = await ctx.delegate(children)
    return " | ".join(f"{result.task_id}={result.status}" for result in results)
