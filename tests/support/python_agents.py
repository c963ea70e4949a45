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


async def flaky_after_llm(task: AgentTask, ctx: AgentContext) -> str:
    """Asks the model, then, on its first try only, fails with a transient error: an attempt that used
    tokens and is retried. ``metadata.ledger``: a file remembering the tasks that have failed once."""
    from coditect.errors import TransientProviderError

    reply = await ctx.llm(task.title)
    with open(str(task.metadata["ledger"]), "a+") as ledger:  # noqa: ASYNC230  # a few bytes, in a test agent
        ledger.seek(0)
        first_try = task.id not in ledger.read().split()
        if first_try:
            ledger.write(f"{task.id}\n")
    if first_try:
        raise TransientProviderError("test", "failed after a successful model call", status_code=503)
    return reply.text


async def several_calls(task: AgentTask, ctx: AgentContext) -> str:
    """Asks the model ``metadata.calls`` times (default 2): a task that costs more than one call's
    estimate."""
    calls = task.metadata.get("calls", 2)
    replies = [await ctx.llm(task.title) for _ in range(int(calls) if isinstance(calls, int) else 2)]
    return " | ".join(reply.text for reply in replies)
