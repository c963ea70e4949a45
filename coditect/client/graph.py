"""Checks on a batch as a whole: unique ids, known agents, and dependencies that form no cycle."""

from __future__ import annotations

from collections.abc import Sequence

from coditect.agents import AgentRegistry
from coditect.errors import TaskInputError
from coditect.models import AgentTask

__all__ = ["check_batch", "dependency_order", "dependency_waves"]


def check_batch(tasks: Sequence[AgentTask], agents: AgentRegistry) -> None:
    """Refuse a batch with repeated ids, unknown dependencies, cycles or unknown agents."""
    seen: set[str] = set()
    for index, task in enumerate(tasks):
        where = f"tasks[{index}]"
        if task.id in seen:
            raise TaskInputError(f"task id {task.id!r} appears more than once", field=f"{where}.id")
        seen.add(task.id)
        if task.agent not in agents:
            known = ", ".join(agents.names)
            raise TaskInputError(
                f"unknown agent {task.agent!r}; known agents: {known}", field=f"{where}.agent"
            )
    ids = {task.id for task in tasks}
    for index, task in enumerate(tasks):
        for dep in task.depends_on:
            if dep not in ids:
                raise TaskInputError(
                    f"depends on unknown task id {dep!r}", field=f"tasks[{index}].depends_on"
                )
    dependency_order(tasks)


def dependency_order(tasks: Sequence[AgentTask]) -> list[AgentTask]:
    """The tasks with every task after its dependencies, input order kept where the graph allows
    (Kahn's algorithm, linear). Dependencies must be ids in ``tasks``; a cycle is refused."""
    from collections import deque

    by_id = {task.id: task for task in tasks}
    unmet = {task.id: len(set(task.depends_on)) for task in tasks}
    dependants: dict[str, list[str]] = {}
    for task in tasks:
        for dep in set(task.depends_on):
            dependants.setdefault(dep, []).append(task.id)
    ready = deque(task.id for task in tasks if not unmet[task.id])
    ordered: list[AgentTask] = []
    while ready:
        task_id = ready.popleft()
        ordered.append(by_id[task_id])
        for dependant in dependants.get(task_id, ()):
            unmet[dependant] -= 1
            if not unmet[dependant]:
                ready.append(dependant)
    if len(ordered) < len(tasks):
        cycle = ", ".join(task.id for task in tasks if unmet[task.id])
        raise TaskInputError(f"dependency cycle among tasks {cycle}", field="depends_on")
    return ordered


def dependency_waves(tasks: Sequence[AgentTask]) -> list[list[AgentTask]]:
    """Group tasks into waves: each task after every task it depends on. Input order within a wave."""
    level: dict[str, int] = {}
    remaining = list(tasks)
    while remaining:
        progressed = [t for t in remaining if all(dep in level for dep in t.depends_on)]
        if not progressed:
            cycle = ", ".join(t.id for t in remaining)
            raise TaskInputError(f"dependency cycle among tasks {cycle}", field="depends_on")
        for task in progressed:
            level[task.id] = 1 + max((level[dep] for dep in task.depends_on), default=-1)
        remaining = [t for t in remaining if t.id not in level]
    waves: list[list[AgentTask]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for task in tasks:
        waves[level[task.id]].append(task)
    return waves
