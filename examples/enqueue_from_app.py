"""Enqueue tasks from your own async app and await their results (run `coditect worker` elsewhere).

CODITECT_REDIS_URL=redis://localhost:6379 python examples/enqueue_from_app.py
"""

import asyncio

from coditect import AgentTask, ProjectOrchestrator


async def main() -> None:
    tasks = [AgentTask(id=f"t{i}", title=f"Summarise chapter {i}", agent="writer") for i in range(1, 4)]
    async with ProjectOrchestrator() as orch:  # no CODITECT_REDIS_URL: runs embedded, in-process
        results = await orch.execute_tasks_parallel(tasks)
    for result in results:
        print(result.task_id, result.status, result.output)


if __name__ == "__main__":
    asyncio.run(main())  # the program's entry point: the one place for asyncio.run()
