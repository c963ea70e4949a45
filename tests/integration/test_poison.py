"""Poison in the queue, end to end: entries planted with redis-py into the queue real workers serve.

Anyone who can write to Redis can leave something in the queue that no worker wrote. Each such entry
must end with a clear failed result or in the dead-letter list (which ``coditect dead-letters`` lists
and clears), the worker processes must carry on (same pids, still running), and a normal batch
enqueued after them must complete.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.keys import DEAD_LETTERS_KEY, JOB_NAME
from coditect.models import AgentTask, ExecutionStatus
from coditect.results import result_from_arq
from coditect.settings import Settings
from tests.support.faults import eventually, run_command

StartWorkers = Callable[..., Any]

NOT_UTF8 = b"\xff\xfe"


def job_bytes(**fields: Any) -> bytes:
    envelope = {"t": 1, "f": JOB_NAME, "a": [{"id": "x", "title": "planted"}], "k": {}}
    envelope["et"] = int(time.time() * 1000)
    return json.dumps({**envelope, **fields}).encode()


# job id -> (payload or None, retry counter or None, queue score or None (now), what its result says)
PLANTED: dict[str, tuple[bytes | None, bytes | None, float | None, str]] = {
    "p-retry-max": (job_bytes(), b"9223372036854775807", None, "retry counter"),
    "p-retry-text": (job_bytes(), b"many", None, "retry counter"),
    "p-minus-inf": (None, None, float("-inf"), "job expired"),
    "p-pickle": (pickle.dumps({"f": JOB_NAME, "a": [], "k": {}, "t": 1, "et": 0}), None, None, "pickle"),
    "p-json-list": (b'["execute_task", {"title": "x"}]', None, None, "job payload is not a JSON object"),
    "p-json-nofunc": (b'{"a": [], "k": {}}', None, None, "job payload has no function name"),
}
# What the dead-letter list holds afterwards, by job id (the non-UTF-8 id shown with \x escapes).
DEAD = {
    "p-retry-max": "retry counter",
    "p-retry-text": "retry counter",
    "p-pickle": "pickle",
    "p-json-list": "job payload is not a JSON object",
    "p-json-nofunc": "job payload has no function name",
    "\\xff\\xfe": "job id is not UTF-8 text",
}


async def test_poison_entries_are_set_aside_and_the_workers_carry_on(
    real_settings: Settings, start_workers: StartWorkers, worker_env: dict[str, str]
) -> None:
    workers = await start_workers(2, CODITECT_MAX_JOBS="4")
    pids = [worker.pid for worker in workers]
    queue = real_settings.queue_name
    async with redis.asyncio.Redis.from_url(real_settings.redis_url) as client:
        now = int(time.time() * 1000)
        async with client.pipeline(transaction=True) as pipe:
            for job_id, (payload, retries, score, _) in PLANTED.items():
                if payload is not None:
                    pipe.set(f"arq:job:{job_id}", payload, px=60_000)
                if retries is not None:
                    pipe.set(f"arq:retry:{job_id}", retries)
                pipe.zadd(queue, {job_id: now if score is None else score})
            pipe.zadd(queue, {NOT_UTF8: now})
            await pipe.execute()

        async def all_handled() -> bool:
            results = await client.mget([f"arq:result:{job_id}" for job_id in PLANTED])
            return all(results) and await client.llen(DEAD_LETTERS_KEY) >= len(DEAD)

        await eventually(all_handled, timeout_s=20, what="every planted entry to be handled")
        raw = dict(zip(PLANTED, await client.mget([f"arq:result:{j}" for j in PLANTED]), strict=True))
        assert await client.zcard(queue) == 0
        assert await client.exists(b"arq:in-progress:" + NOT_UTF8) == 0

    for job_id, (_, _, _, expected) in PLANTED.items():
        result = result_from_arq(raw[job_id], job_id)
        assert result.status is ExecutionStatus.FAILED, job_id
        assert expected in (result.error or ""), (job_id, result.error)
        assert len(result.error or "") < 300, (job_id, result.error)

    # The workers carry on, and a normal batch enqueued after the poison completes.
    async with ProjectOrchestrator(real_settings) as orch:
        after = await orch.run_batch(
            [AgentTask(id="a", title="A"), AgentTask(id="b", title="B", depends_on=["a"])], batch_id="after"
        )
    assert [r.status for r in after] == [ExecutionStatus.SUCCESS] * 2
    assert [w.pid for w in workers] == pids
    assert all(w.process is not None and w.process.returncode is None for w in workers)
    log = "\n".join(line for w in workers for line in w.lines)
    assert "Traceback" not in log
    assert "list indices must be integers" not in log

    # The user lists the dead letters (one of them pushed by someone else), then clears them.
    async with redis.asyncio.Redis.from_url(real_settings.redis_url) as client:
        await client.lpush(DEAD_LETTERS_KEY, b"\x80 not JSON")
    code, out, err = await run_command(
        sys.executable, "-m", "coditect", "dead-letters", "--json", env=worker_env
    )
    assert code == 0, err.decode()
    listed = {entry["job_id"]: entry["reason"] for entry in json.loads(out)}
    assert listed.pop(None) == "not an entry coditect wrote: \\x80 not JSON"
    assert set(listed) == set(DEAD), listed
    for job_id, expected in DEAD.items():
        assert expected in listed[job_id], (job_id, listed[job_id])
    code, out, err = await run_command(
        sys.executable, "-m", "coditect", "dead-letters", "--clear", env=worker_env
    )
    assert code == 0, err.decode()
    assert f"cleared {len(DEAD) + 1} dead letter(s)" in out.decode()
    code, out, _ = await run_command(sys.executable, "-m", "coditect", "dead-letters", env=worker_env)
    assert (code, out.decode().strip()) == (0, "no dead letters")
