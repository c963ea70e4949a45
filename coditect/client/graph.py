"""Checks on a batch as a whole: unique ids, known agents, dependencies that form no cycle, and the
legacy scripts its agents need. Linear in the number of tasks and dependencies (Kahn's algorithm)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from coditect.agents import AgentRegistry
from coditect.errors import ConfigurationError, TaskInputError
from coditect.execution.legacy_scripts import ScriptRunner
from coditect.execution.python_agents import load_entrypoint
from coditect.models import AgentConfig, AgentTask
from coditect.settings import Settings

__all__ = ["check_batch", "dependency_order", "dependency_waves"]

# A cycle of thousands of tasks is named by its first few, in input order.
MAX_CYCLE_IDS_SHOWN = 10


def check_batch(
    tasks: Sequence[AgentTask], agents: AgentRegistry, *, settings: Settings | None = None
) -> list[list[AgentTask]]:
    """Refuse a batch with repeated ids, unknown agents or dependencies, or cycles; return its waves.

    With ``settings`` (the tasks run in this process), also refuse a task whose agent runs a legacy
    script (script mode, or llm mode when ``use_direct_llm`` is false) that is missing from
    ``settings.scripts_dir``, or a python agent whose entrypoint cannot be imported.
    """
    index_of: dict[str, int] = {}
    for index, task in enumerate(tasks):
        if task.id in index_of:
            raise TaskInputError(f"task id {task.id!r} appears more than once", field=f"tasks[{index}].id")
        index_of[task.id] = index
        if task.agent not in agents:
            known = ", ".join(agents.names)
            raise TaskInputError(
                f"unknown agent {task.agent!r}; known agents: {known}", field=f"tasks[{index}].agent"
            )
    waves = _waves(tasks, index_of)
    if settings is not None:
        _check_scripts(tasks, agents, settings)
    return waves


def dependency_waves(tasks: Sequence[AgentTask]) -> list[list[AgentTask]]:
    """Group tasks into waves: each task after every task it depends on. Input order within a wave."""
    return _waves(tasks, {task.id: index for index, task in enumerate(tasks)})


def dependency_order(waves: Sequence[Sequence[AgentTask]]) -> list[AgentTask]:
    """The tasks of ``waves`` with every task after its dependencies (the order a batch is sent in)."""
    return [task for wave in waves for task in wave]


def _waves(tasks: Sequence[AgentTask], index_of: Mapping[str, int]) -> list[list[AgentTask]]:
    """Kahn's algorithm: a task's wave is one past the latest wave of its dependencies.

    Only tasks with dependencies or dependants get an entry: a batch of 100,000 independent tasks
    allocates no per-task lists (those allocations, and the collections they set off, were most of
    the time before its first task was sent)."""
    unmet: dict[int, int] = {}
    dependants: dict[int, list[int]] = {}
    for index, task in enumerate(tasks):
        if not task.depends_on:
            continue
        deps = set(task.depends_on)
        unmet[index] = len(deps)
        for dep in deps:
            at = index_of.get(dep)
            if at is None:
                raise TaskInputError(
                    f"depends on unknown task id {dep!r}", field=f"tasks[{index}].depends_on"
                )
            dependants.setdefault(at, []).append(index)
    if not unmet:
        return [list(tasks)] if tasks else []
    level: dict[int, int] = {}
    ready = deque(index for index in dependants if index not in unmet)
    placed = len(tasks) - len(unmet)
    while ready:
        index = ready.popleft()
        next_level = level.get(index, 0) + 1
        for dependant in dependants.get(index, ()):
            if next_level > level.get(dependant, 0):
                level[dependant] = next_level
            unmet[dependant] -= 1
            if unmet[dependant] == 0:
                placed += 1
                ready.append(dependant)
    if placed < len(tasks):
        raise _cycle_error(tasks, index_of, unmet)
    waves: list[list[AgentTask]] = [[] for _ in range(max(level.values(), default=0) + 1)]
    for index, task in enumerate(tasks):
        waves[level.get(index, 0)].append(task)
    return waves


def _cycle_error(
    tasks: Sequence[AgentTask], index_of: Mapping[str, int], unmet: Mapping[int, int]
) -> TaskInputError:
    """Name one cycle: from a task left unplaced, follow unplaced dependencies until one repeats."""
    # Every unplaced task waits on at least one unplaced dependency, so the walk never stops short.
    current = min(index for index, count in unmet.items() if count)
    seen: dict[int, int] = {}
    path: list[int] = []
    while current not in seen:
        seen[current] = len(path)
        path.append(current)
        current = next(index_of[dep] for dep in tasks[current].depends_on if unmet.get(index_of[dep], 0))
    cycle = sorted(path[seen[current] :])
    shown = ", ".join(tasks[index].id for index in cycle[:MAX_CYCLE_IDS_SHOWN])
    more = len(cycle) - MAX_CYCLE_IDS_SHOWN
    return TaskInputError(
        f"dependency cycle among tasks {shown}" + (f" and {more} more" if more > 0 else ""),
        field="depends_on",
    )


def _check_scripts(tasks: Sequence[AgentTask], agents: AgentRegistry, settings: Settings) -> None:
    runner = ScriptRunner(settings.scripts_dir)
    problems: dict[str, str | None] = {}
    for index, task in enumerate(tasks):
        if task.agent not in problems:
            problems[task.agent] = _script_problem(agents.get(task.agent), runner, settings)
        problem = problems[task.agent]
        if problem is not None:
            raise TaskInputError(problem, field=f"tasks[{index}].agent")


def _script_problem(config: AgentConfig, runner: ScriptRunner, settings: Settings) -> str | None:
    """Why the agent cannot run in this process: its legacy script is missing (or outside the scripts
    folder), or its python entrypoint cannot be imported; None if it can."""
    if config.mode == "python" and config.entrypoint is not None:
        try:
            load_entrypoint(config.entrypoint)
        except ConfigurationError as err:
            return f"agent {config.name!r}: {err}"
        return None
    by_setting = config.mode == "llm" and not settings.use_direct_llm
    if config.mode != "script" and not by_setting:
        return None
    try:
        runner.resolve(config.name, config.script)
    except ConfigurationError as err:
        why = " (CODITECT_USE_DIRECT_LLM is false)" if by_setting else ""
        return f"agent {config.name!r} runs a legacy script{why}: {err}"
    return None
