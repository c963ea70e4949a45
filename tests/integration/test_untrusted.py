"""Untrusted payloads, end to end: jobs planted in the queue the way ARQ stores them, and script mode.

Anyone who can write to Redis can plant a job (``PSETEX arq:job:<id>`` + ``ZADD <queue>``). A real
worker process must fail each bad one with a clear error, run none of them, unpickle nothing, keep
running and then run a good task. Script agents get no secret from the worker's environment, and a
script that hangs is killed with its whole process group.

An agent name such as ``../x`` in a batch file is refused before anything is enqueued:
``tests/integration/test_bad_input.py``. Unsafe agent and script names at the runner:
``tests/test_scripts.py::test_unsafe_names_are_refused``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.jobs import JOB_NAME
from coditect.keys import job_id_for
from coditect.models import AgentTask, ExecutionStatus
from coditect.results import result_from_arq
from coditect.serialization import job_deserializer, job_serializer
from coditect.settings import Settings
from tests.support.faults import eventually

StartWorkers = Callable[..., Any]
KEY = "sk-ant-test-SECRET-untrusted-7f3a"
PLANTED_BATCH = "planted"

COUNTER = """
import json, sys
task = json.load(sys.stdin)
open(sys.argv[0] + ".ledger", "a").write(task["id"] + "\\n")
print("ran", task["id"])
"""
ENV_PROBE = """
import json, os
print(json.dumps({"key": os.environ.get("ANTHROPIC_API_KEY", "<none>"), "env": dict(os.environ)}))
"""
HANGER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[0] + ".pids.tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.replace(sys.argv[0] + ".pids.tmp", sys.argv[0] + ".pids")
time.sleep(60)
"""


class Armed:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def job(function: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"t": 1, "f": function, "a": list(args), "k": kwargs, "et": int(time.time() * 1000)}


def armed_pickle(marker: Path, protocol: int) -> bytes:
    return pickle.dumps(job(JOB_NAME, Armed(marker)), protocol=protocol)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a killed grandchild is a zombie until init reaps it: dead all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    for name, body in (("counter", COUNTER), ("envprobe", ENV_PROBE), ("hanger", HANGER)):
        (folder / f"execute_{name}.py").write_text(body)
    return folder


@pytest.fixture
def agents_file(tmp_path: Path) -> Path:
    path = tmp_path / "agents.json"
    agents: list[dict[str, Any]] = [{"name": name, "mode": "script"} for name in ("counter", "envprobe")]
    agents.append({"name": "hanger", "mode": "script", "timeout_s": 1})
    path.write_text(json.dumps({"agents": agents}))
    return path


@pytest.fixture
def leftover_pids() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        if is_alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_planted_jobs_fail_clearly_run_nothing_and_the_worker_carries_on(
    real_settings: Settings, start_workers: StartWorkers, scripts: Path, agents_file: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "UNPICKLED"
    probe = tmp_path / "probe"
    loaded = pickle.loads(armed_pickle(probe, 5))  # the payload is armed: loading it makes the file
    loaded["a"][0].close()
    assert probe.exists()

    good = {"title": "fine", "agent": "counter"}
    planted: dict[str, tuple[bytes, str]] = {
        "not-json": (b"\x00\xff this is not JSON {", "unreadable job payload, not executed"),
        "pickle": (armed_pickle(marker, 5), "refusing a pickle payload"),
        "pickle-protocol-0": (armed_pickle(marker, 0), "unreadable job payload, not executed"),
        "not-a-job": (b'["execute_task", {"title": "x"}]', "not executed: job payload is not a JSON object"),
        "no-title": (
            job_serializer(job(JOB_NAME, {"id": "no-title", "agent": "counter", "description": "x"})),
            "invalid task payload, not executed: title: Field required",
        ),
        "extra-api-key": (
            job_serializer(job(JOB_NAME, {"id": "extra-api-key", **good, "api_key": KEY})),
            "invalid task payload, not executed: api_key: Extra inputs are not permitted",
        ),
        "task-text-not-json": (
            job_serializer(job(JOB_NAME, '{"id": "task-text-not-json", "title": ')),
            "invalid task payload, not executed",
        ),
        "agent-traversal": (
            job_serializer(
                job(JOB_NAME, {"id": "agent-traversal", **good}, agent="../counter", mode="script")
            ),
            "unknown agent '../counter'",
        ),
        "unknown-function": (
            job_serializer(job("os.system", f"touch {marker}")),
            "function 'os.system' not found",
        ),
    }
    (worker,) = await start_workers(
        1,
        CODITECT_SCRIPTS_DIR=str(scripts),
        CODITECT_AGENTS_FILE=str(agents_file),
        ANTHROPIC_API_KEY=KEY,
        CODITECT_LLM_PROVIDER="offline",
    )
    client = redis.asyncio.Redis.from_url(real_settings.redis_url)
    try:
        now_ms = int(time.time() * 1000)
        job_ids = {name: job_id_for(PLANTED_BATCH, name) for name in planted}
        async with client.pipeline(transaction=True) as pipe:
            for name, (payload, _) in planted.items():
                pipe.psetex(f"arq:job:{job_ids[name]}", 60_000, payload)
                pipe.zadd(real_settings.queue_name, {job_ids[name]: now_ms})
            await pipe.execute()

        # Planted jobs belong to no recorded batch, so no event tells of them: look for their results.
        async def all_results() -> bool:
            return bool(
                await client.exists(*(f"arq:result:{job_id}" for job_id in job_ids.values())) == len(job_ids)
            )

        await eventually(all_results, timeout_s=20, what="a result for every planted job")
        raw_results = {name: await client.get(f"arq:result:{job_id}") for name, job_id in job_ids.items()}
        queued_left = await client.zcard(real_settings.queue_name)
    finally:
        await client.aclose()

    for name, (_, expected) in planted.items():
        raw = raw_results[name]
        assert raw is not None, name
        assert isinstance(job_deserializer(raw), dict), name  # coditect's own JSON, readable
        result = result_from_arq(raw, job_ids[name])
        assert result.status is ExecutionStatus.FAILED, name
        assert result.error is not None, name
        assert expected in result.error, (name, result.error)
        assert KEY not in result.error, name
        assert result.output == "", name
    assert queued_left == 0

    settings = real_settings.model_copy(update={"agents_file": agents_file})
    async with ProjectOrchestrator(settings) as orch:
        (after,) = await orch.run_batch([AgentTask(id="good", **good)], batch_id="after")
    assert after.status is ExecutionStatus.SUCCESS, after.error
    assert after.worker is not None
    assert after.worker.endswith(f":{worker.pid}")
    assert worker.process is not None
    assert worker.process.returncode is None
    assert (scripts / "execute_counter.py.ledger").read_text().split() == ["good"]  # nothing planted ran
    assert not marker.exists(), "a planted pickle was unpickled"
    log = "\n".join(worker.lines)
    assert "planted:not-json: payload is not a coditect JSON job (job payload is not UTF-8 text)" in log
    assert "Traceback" not in log
    assert KEY not in log


async def test_scripts_get_no_secrets_and_a_hung_script_dies_with_its_process_group(
    real_settings: Settings,
    start_workers: StartWorkers,
    scripts: Path,
    agents_file: Path,
    leftover_pids: list[int],
) -> None:
    await start_workers(
        1,
        CODITECT_SCRIPTS_DIR=str(scripts),
        CODITECT_AGENTS_FILE=str(agents_file),
        ANTHROPIC_API_KEY=KEY,
        CODITECT_LLM_PROVIDER="offline",
    )
    settings = real_settings.model_copy(update={"agents_file": agents_file})
    tasks = [
        AgentTask(id="probe", title="env", agent="envprobe"),
        AgentTask(id="hang", title="hang", agent="hanger"),
    ]
    started = time.monotonic()
    async with ProjectOrchestrator(settings) as orch:
        probe, hang = await orch.run_batch(tasks, batch_id="scripts")
    elapsed = time.monotonic() - started

    assert probe.status is ExecutionStatus.SUCCESS, probe.error
    seen = json.loads(probe.output)
    assert seen["key"] == "<none>"
    assert not any(name.startswith(("ANTHROPIC_", "CODITECT_", "OPENAI_")) for name in seen["env"])
    assert KEY not in probe.output

    assert hang.status is ExecutionStatus.TIMEOUT, hang.error
    assert "timed out after 1 s" in (hang.error or "")
    assert elapsed < 10
    pids_file = scripts / "execute_hanger.py.pids"
    assert pids_file.exists(), "the hanging script never started"
    script_pid, grandchild_pid = (int(pid) for pid in pids_file.read_text().split())
    leftover_pids += [script_pid, grandchild_pid]
    deadline = time.monotonic() + 5
    while is_alive(script_pid) or is_alive(grandchild_pid):
        assert time.monotonic() < deadline, "the script or its grandchild outlived the timeout"
        await asyncio.sleep(0.02)  # the kill is asynchronous; nothing to wait on for another's process
