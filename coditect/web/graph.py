"""The dependency graph of a batch, laid out for an SVG drawn by the template: one column per
dependency depth (a task one column right of its deepest dependency), tasks in batch order within
a column, an edge from each dependency to its dependant. Delegated children are not drawn here:
the task list shows them under their parent."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from coditect.client.graph import dependency_waves
from coditect.errors import TaskInputError
from coditect.models import AgentTask

__all__ = ["MAX_NODES", "Edge", "GraphLayout", "Node", "layout"]

MAX_NODES = 300
NODE_WIDTH = 160
NODE_HEIGHT = 30
COLUMN_GAP = 56
ROW_GAP = 12
PADDING = 8
LABEL_CHARS = 20


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    label: str
    title: str
    status: str
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    path: str


@dataclass(frozen=True, slots=True)
class GraphLayout:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int
    node_width: int = NODE_WIDTH
    node_height: int = NODE_HEIGHT


def _label(task_id: str) -> str:
    return task_id if len(task_id) <= LABEL_CHARS else task_id[: LABEL_CHARS - 1] + "…"


def layout(
    tasks: Sequence[AgentTask], statuses: Mapping[str, str], *, mask: Callable[[str], str] = str
) -> GraphLayout | None:
    """Where each task and edge goes; None when there are no tasks, more than ``MAX_NODES``, or a
    dependency outside ``tasks`` (nothing sensible to draw). ``mask`` hides secrets in titles."""
    if not tasks or len(tasks) > MAX_NODES:
        return None
    try:
        waves = dependency_waves(tasks)
    except TaskInputError:
        return None
    nodes: dict[str, Node] = {}
    for column, wave in enumerate(waves):
        for row, task in enumerate(wave):
            nodes[task.id] = Node(
                id=task.id,
                label=_label(task.id),
                title=mask(task.title),
                status=statuses.get(task.id, "pending"),
                x=PADDING + column * (NODE_WIDTH + COLUMN_GAP),
                y=PADDING + row * (NODE_HEIGHT + ROW_GAP),
            )
    edges = []
    for task in tasks:
        target = nodes[task.id]
        for dep in dict.fromkeys(task.depends_on):
            source = nodes[dep]
            x1, y1 = source.x + NODE_WIDTH, source.y + NODE_HEIGHT // 2
            x2, y2 = target.x, target.y + NODE_HEIGHT // 2
            middle = (x1 + x2) // 2
            edges.append(Edge(dep, task.id, f"M{x1} {y1} C{middle} {y1} {middle} {y2} {x2} {y2}"))
    tallest = max(len(wave) for wave in waves)
    width = 2 * PADDING + len(waves) * NODE_WIDTH + (len(waves) - 1) * COLUMN_GAP
    height = 2 * PADDING + tallest * NODE_HEIGHT + (tallest - 1) * ROW_GAP
    return GraphLayout(list(nodes.values()), edges, width, height)
