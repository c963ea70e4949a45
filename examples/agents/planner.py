"""A python agent that plans with its model, then delegates each step to the writer.

Agents file entry (``examples/agents.json``)::

    {"name": "planner", "mode": "python", "entrypoint": "examples.agents.planner:plan",
     "system_prompt": "You plan work. Answer with one short step per line.", "timeout_s": 600}

The module must be importable where the workers run: from the repository's root,
``PYTHONPATH=. CODITECT_AGENTS_FILE=examples/agents.json coditect run examples/plan.json``.
"""

from __future__ import annotations

from coditect import AgentTask
from coditect.execution.context import AgentContext

MAX_STEPS = 5


async def plan(task: AgentTask, ctx: AgentContext) -> str:
    """Ask the model for the steps, hand each to the writer, and join what they wrote."""
    reply = await ctx.llm(f"List at most {MAX_STEPS} steps, one per line, to do this:\n\n{task.prompt}")
    steps = [line.strip(" -*0123456789.") for line in reply.text.splitlines() if line.strip()][:MAX_STEPS]
    if not steps:
        steps = [task.title]
    # Each step becomes a task of the same batch; while they run, this task holds no worker slot.
    results = await ctx.delegate(
        [AgentTask(id=f"step-{n}", title=step, agent="writer") for n, step in enumerate(steps, 1)]
    )
    return "\n\n".join(
        f"{n}. {result.output if result.succeeded else f'(not done: {result.error})'}"
        for n, result in enumerate(results, 1)
    )
