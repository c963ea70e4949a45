"""An app that already uses ARQ enqueues coditect's job by name and reads the result with Job.result().

CODITECT_REDIS_URL=redis://localhost:6379 python examples/plain_arq_client.py
"""

import asyncio
import os

from arq import create_pool
from arq.connections import RedisSettings

from coditect.jobs import job_deserializer, job_serializer


async def main() -> None:
    redis = await create_pool(
        RedisSettings.from_dsn(os.environ.get("CODITECT_REDIS_URL", "redis://localhost:6379")),
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
    )
    task = {"id": "hello", "title": "Say hello in French", "agent": "default"}
    job = await redis.enqueue_job("execute_task", task, _queue_name="coditect:queue")
    assert job is not None, "a job with this id is already queued or finished"
    result = await job.result(timeout=60)
    print(result["status"], result["output"])
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
