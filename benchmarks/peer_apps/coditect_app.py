"""coditect's client side: one batch through ``ProjectOrchestrator.execute_tasks_parallel``.

Its workers are coditect's own (``arq coditect.jobs.WorkerSettings``) with the offline provider; a job
that sleeps is a task whose provider answers after ``CODITECT_OFFLINE_LATENCY_S``, set on the workers.
"""

from __future__ import annotations

from benchmarks.harness import BATCH_TIMEOUT_S, check_results, make_tasks, unique_batch_id
from benchmarks.peer_apps.common import redis_url
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.settings import Settings

__all__ = ["CoditectClient"]


class CoditectClient:
    """A batch is one ``execute_tasks_parallel`` call; one job is a batch of one task."""

    def __init__(self) -> None:
        self.orchestrator: ProjectOrchestrator | None = None

    async def _orchestrator(self) -> ProjectOrchestrator:
        if self.orchestrator is None:
            self.orchestrator = ProjectOrchestrator(Settings(_env_file=None, redis_url=redis_url()))
            await self.orchestrator.__aenter__()
        return self.orchestrator

    async def batch(self, count: int, sleep_s: float) -> None:
        orchestrator = await self._orchestrator()
        tasks = make_tasks(count, "p")
        results = await orchestrator.execute_tasks_parallel(
            tasks, batch_id=unique_batch_id("peers"), timeout_s=BATCH_TIMEOUT_S
        )
        check_results(tasks, results)

    async def round_trip(self, value: int) -> None:
        tasks = make_tasks(1, f"rt{value}-")
        results = await (await self._orchestrator()).execute_tasks_parallel(
            tasks, batch_id=unique_batch_id("rt"), timeout_s=BATCH_TIMEOUT_S
        )
        check_results(tasks, results)

    async def close(self) -> None:
        if self.orchestrator is not None:
            await self.orchestrator.__aexit__(None, None, None)
