"""A batch's tasks as the batch page lists them: delegated children under their parent, filtered by
status and by a search on id or title, at most ``MAX_ROWS`` at a time."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from coditect.client.batches import BatchStore
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.web.formatting import token_pair
from coditect.web.reads import Parent, read_parents

__all__ = ["MAX_ROWS", "BatchTasks", "RowsPage", "TaskRow", "load_batch_tasks", "rows_page", "tree_order"]

MAX_ROWS = 500
FINAL_STATUSES = frozenset({"success", "failed", "timeout", "cancelled"})


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task on the batch page; the result's fields are empty until it has one."""

    id: str
    title: str
    status: str
    agent: str
    depth: int = 0
    parent: str | None = None
    model: str = ""
    attempts: int | None = None
    duration_s: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    worker: str = ""

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def tokens(self) -> str:
        return token_pair(self.tokens_in, self.tokens_out)

    def with_result(self, result: ExecutionResult) -> TaskRow:
        usage = result.usage
        return TaskRow(
            id=self.id,
            title=self.title,
            status=result.status.value,
            agent=result.agent or self.agent,
            depth=self.depth,
            parent=self.parent,
            model=result.model or "",
            attempts=result.attempts,
            duration_s=result.duration_s if result.status.is_final else None,
            tokens_in=usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
            tokens_out=usage.output_tokens,
            cost_usd=result.cost_usd,
            worker=result.worker or "",
        )


@dataclass(frozen=True, slots=True)
class RowsPage:
    rows: list[TaskRow]
    matched: int
    total: int


def tree_order(order: Sequence[str], parents: Mapping[str, Parent]) -> list[str]:
    """Task ids with each delegated child right after its parent (and the parent's earlier children)."""
    children: dict[str, list[str]] = {}
    for task_id in order:
        parent = parents.get(task_id)
        if parent is not None:
            children.setdefault(parent.task_id, []).append(task_id)
    known = set(order)
    roots = [t for t in order if t not in parents or parents[t].task_id not in known]
    placed: list[str] = []
    stack = list(reversed(roots))
    while stack:
        task_id = stack.pop()
        placed.append(task_id)
        stack.extend(reversed(children.get(task_id, [])))
    return placed


def _matches(row: TaskRow, status: str, query: str) -> bool:
    if status and row.status != status:
        return False
    return not query or query in row.id.lower() or query in row.title.lower()


@dataclass(frozen=True, slots=True)
class BatchTasks:
    """A batch's tasks as Redis holds them: order, definitions, states, delegation."""

    order: list[str]
    tasks: dict[str, AgentTask]
    states: dict[str, ExecutionStatus]
    parents: dict[str, Parent]


async def load_batch_tasks(store: BatchStore, batch_id: str) -> BatchTasks:
    return BatchTasks(
        order=await store.task_ids(batch_id),
        tasks=await store.tasks(batch_id),
        states=await store.states(batch_id),
        parents=await read_parents(store.redis, batch_id),
    )


async def rows_page(
    store: BatchStore,
    batch_id: str,
    batch: BatchTasks,
    *,
    status: str = "",
    query: str = "",
    mask: Callable[[str], str] = str,
) -> RowsPage:
    """The tasks that match ``status`` (empty: any) and ``query`` (in the id or the title), with their
    results: at most ``MAX_ROWS``. ``mask`` hides secrets in titles."""
    rows = []
    for task_id in tree_order(batch.order, batch.parents):
        task = batch.tasks.get(task_id)
        parent = batch.parents.get(task_id)
        rows.append(
            TaskRow(
                id=task_id,
                title=mask(task.title) if task is not None else "",
                status=batch.states.get(task_id, ExecutionStatus.PENDING).value,
                agent=task.agent if task is not None else "",
                depth=parent.depth if parent is not None else 0,
                parent=parent.task_id if parent is not None else None,
            )
        )
    needle = query.strip().lower()
    matched = [row for row in rows if _matches(row, status, needle)]
    shown = matched[:MAX_ROWS]
    results = await store.fetch_results(batch_id, [row.id for row in shown])
    shown = [row.with_result(results[row.id]) if row.id in results else row for row in shown]
    return RowsPage(shown, len(matched), len(rows))
