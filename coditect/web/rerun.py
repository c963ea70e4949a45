"""Re-running what did not succeed: a batch's failed, timed-out and cancelled tasks as a new batch.

The same tasks, each keeping only the dependencies that are re-run too (one that succeeded is not
waited for again). Delegated children are not re-run themselves: their parent delegates again
when it runs. The new batch records ``rerun_of``; submitting the same new id twice adds nothing, so
a form sent twice makes one batch.
"""

from __future__ import annotations

from coditect.client.batches import BatchStore
from coditect.client.graph import dependency_order, dependency_waves
from coditect.models import ExecutionStatus
from coditect.web.reads import read_parents

__all__ = ["RERUN_STATUSES", "rerun_failed"]

RERUN_STATUSES = frozenset({ExecutionStatus.FAILED, ExecutionStatus.TIMEOUT, ExecutionStatus.CANCELLED})


async def rerun_failed(store: BatchStore, batch_id: str, new_batch_id: str) -> int:
    """Submit the batch's unsuccessful tasks as batch ``new_batch_id``; returns how many (0: none)."""
    summary = await store.summary(batch_id)
    if summary is None:
        return 0
    order = await store.task_ids(batch_id)
    tasks = await store.tasks(batch_id)
    states = await store.states(batch_id)
    parents = await read_parents(store.redis, batch_id)
    chosen = [
        tasks[task_id]
        for task_id in order
        if task_id in tasks and task_id not in parents and states.get(task_id) in RERUN_STATUSES
    ]
    if not chosen:
        return 0
    kept = {task.id for task in chosen}
    pruned = [
        task.model_copy(update={"depends_on": [dep for dep in task.depends_on if dep in kept]})
        for task in chosen
    ]
    name = summary.name or batch_id
    fields: dict[str, str | int | float] = {"name": f"{name} (re-run)", "rerun_of": batch_id}
    await store.submit(new_batch_id, dependency_order(dependency_waves(pruned)), fields=fields)
    return len(pruned)
