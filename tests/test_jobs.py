"""The ARQ job function, its retry decision, and the lazily built ``WorkerSettings``."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import arq.worker
import fakeredis
import pytest
from arq.connections import RedisSettings
from arq.jobs import Job
from arq.worker import Retry, Worker, get_kwargs

import coditect.jobs as jobs
from coditect.agents import AgentRegistry
from coditect.client.batches import BatchStore
from coditect.engine.context import JOB_RUN_KEY, JobRun
from coditect.engine.runtime import WorkerRuntime
from coditect.execution.executor import TaskExecutor
from coditect.jobs import (
    EMBEDDED_KEY,
    EXECUTOR_KEY,
    JOB_NAME,
    JOB_TIMEOUT_GRACE_S,
    RUNTIME_KEY,
    SETTINGS_KEY,
    WORKER_KEY,
    execute_task,
    retry_delay_s,
    worker_options,
    worker_settings_class,
)
from coditect.keys import BATCH_KEY_PREFIX, USAGE_PREFIX, job_id_for
from coditect.llm.prices import Price, PriceTable
from coditect.models import AgentConfig, AgentTask, ExecutionResult, ExecutionStatus, TokenUsage
from coditect.results import result_from_arq
from coditect.serialization import job_deserializer, job_serializer
from coditect.settings import Settings
from tests.support.fake_backend import FakeBackend

CLOSED_PORT_URL = "http://127.0.0.1:1/run"  # nothing listens on port 1: connection refused at once
AGENTS = (
    AgentConfig(name="default"),
    AgentConfig(name="remote", mode="api", endpoint=CLOSED_PORT_URL),  # transient failure
    AgentConfig(name="no-endpoint", mode="api"),  # permanent failure
)


class _SpyExecutor:
    """Stands in for TaskExecutor where a test must prove the executor was never called."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def execute(self, *args: Any) -> Any:
        self.calls.append(args)
        raise AssertionError("the executor must not be called")


@pytest.fixture
async def executor(settings: Settings) -> AsyncIterator[TaskExecutor]:
    async with TaskExecutor(settings, agents=AgentRegistry(AGENTS)) as executor:
        yield executor


def job_ctx(settings: Settings, executor: Any, job_try: int = 1) -> dict[str, Any]:
    """A job's ctx outside a worker: no engine (no slot, no batch), an executor of the test's."""
    runtime = WorkerRuntime(fakeredis.FakeAsyncRedis(), executor)
    return {SETTINGS_KEY: settings, EXECUTOR_KEY: executor, RUNTIME_KEY: runtime, "job_try": job_try}


# -- retry_delay_s --------------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after_s", [0.0, 2.5, 59.0, 300.0])
def test_retry_after_is_honoured_exactly(settings: Settings, retry_after_s: float) -> None:
    assert retry_delay_s(3, retry_after_s, settings) == retry_after_s


@pytest.mark.parametrize("job_try", [1, 2, 3, 4])
def test_backoff_doubles_per_try_with_jitter_of_at_most_a_quarter(settings: Settings, job_try: int) -> None:
    tuned = settings.model_copy(update={"retry_backoff_s": 2.0, "retry_backoff_max_s": 1000.0})
    full = 2.0 * 2 ** (job_try - 1)

    delays = {retry_delay_s(job_try, None, tuned) for _ in range(200)}

    assert all(0.75 * full <= delay <= full for delay in delays), (full, min(delays), max(delays))
    assert len(delays) > 1, "jittered"


def test_backoff_is_capped(settings: Settings) -> None:
    tuned = settings.model_copy(update={"retry_backoff_s": 1.0, "retry_backoff_max_s": 5.0})

    delays = [retry_delay_s(job_try, None, tuned) for job_try in range(4, 40)]

    assert max(delays) <= 5.0
    assert min(delays) >= 0.75 * 5.0


# -- execute_task ---------------------------------------------------------------------------------


async def test_a_transient_failure_asks_arq_to_retry_while_tries_remain(
    settings: Settings, executor: TaskExecutor
) -> None:
    task = AgentTask(id="t1", title="call the endpoint", agent="remote")

    with pytest.raises(Retry) as caught:
        await execute_task(job_ctx(settings, executor, job_try=2), task.model_dump(mode="json"))

    # try 2 with the default 1 s backoff: 2 s, jittered down by at most a quarter
    assert caught.value.defer_score is not None
    assert 1500 <= caught.value.defer_score <= 2000


async def test_a_transient_failure_on_the_last_try_returns_the_failed_result(
    settings: Settings, executor: TaskExecutor
) -> None:
    task = AgentTask(id="t1", title="call the endpoint", agent="remote")

    result = await execute_task(
        job_ctx(settings, executor, job_try=settings.max_tries), task.model_dump(mode="json")
    )

    assert result["status"] == "failed"
    assert result["attempts"] == settings.max_tries
    assert "cannot reach http://127.0.0.1:1/run" in result["error"]
    assert "retryable" not in result, "the retry hint is not part of the result"


async def test_a_permanent_failure_returns_failed_at_once(settings: Settings, executor: TaskExecutor) -> None:
    task = AgentTask(id="t1", title="no endpoint", agent="no-endpoint")

    result = await execute_task(job_ctx(settings, executor, job_try=1), task.model_dump_json())

    assert result["status"] == "failed"
    assert result["attempts"] == 1
    assert "needs an 'endpoint' URL" in result["error"]


async def test_a_task_runs_with_agent_and_mode_overrides(settings: Settings, executor: TaskExecutor) -> None:
    task = AgentTask(id="t1", title="hello", agent="remote")

    result = await execute_task(
        job_ctx(settings, executor, job_try=3), task.model_dump_json(), "default", "llm"
    )

    assert result["status"] == "success"
    assert (result["agent"], result["mode"], result["provider"]) == ("default", "llm", "offline")
    assert result["attempts"] == 3


async def test_a_task_refused_by_its_budget_after_a_retry_carries_what_its_attempts_spent(
    settings: Settings,
) -> None:
    prices = PriceTable({"priced-1": Price(3.0, 15.0, 0.3, 3.75)})
    redis = fakeredis.FakeAsyncRedis()
    executor = TaskExecutor(settings, agents=AgentRegistry(AGENTS), prices=prices)
    runtime = WorkerRuntime(redis, executor)
    job_id = job_id_for("b", "t1")
    await redis.hset(BATCH_KEY_PREFIX + "b", mapping={"total": 2, "budget_usd": 0.001, "cost": 0.002})
    spent = TokenUsage(input_tokens=100, output_tokens=40)
    first_try = ExecutionResult(
        task_id="t1", status=ExecutionStatus.FAILED, provider="anthropic", model="priced-1", usage=spent
    )
    await runtime.keep_usage(job_id, first_try)  # its first try called the model, then was retried
    run = JobRun(job_id=job_id, job_try=2, batch_id="b", task_id="t1", budget=True)
    ctx = {**job_ctx(settings, executor, job_try=2), RUNTIME_KEY: runtime, "job_id": job_id, JOB_RUN_KEY: run}
    task = AgentTask(id="t1", title="spend", agent="default")

    try:
        result = await execute_task(ctx, task.model_dump(mode="json"))  # type: ignore[arg-type]
        left = await redis.exists(USAGE_PREFIX + job_id)
    finally:
        await runtime.aclose()

    assert result["status"] == "cancelled"
    assert result["error"].startswith("budget exhausted: ")
    assert result["attempts"] == 1
    assert TokenUsage.model_validate(result["usage"]) == spent
    assert (result["provider"], result["model"]) == ("anthropic", "priced-1")
    assert result["cost_usd"] == pytest.approx((100 * 3.0 + 40 * 15.0) / 1e6)
    assert left == 0


@pytest.mark.parametrize(
    ("payload", "task_id", "field"),
    [
        ({"id": "t9", "description": "no title"}, "t9", "title: Field required"),
        ({"id": "t9", "title": "x", "surprise": 1}, "t9", "surprise: Extra inputs are not permitted"),
        ('{"id": "t9", "title": ""}', "t9", "title: String should have at least 1 character"),
        ("not json at all", "?", "task: Invalid JSON"),
        ({"id": 7, "title": "x"}, "?", "id: Input should be a valid string"),
    ],
    ids=["missing-title", "extra-field", "empty-title-json-text", "not-json", "bad-id"],
)
async def test_an_invalid_payload_fails_without_calling_the_executor(
    settings: Settings, payload: dict[str, Any] | str, task_id: str, field: str
) -> None:
    spy = _SpyExecutor()

    result = await execute_task(job_ctx(settings, spy, job_try=1), payload)

    assert spy.calls == []
    assert result["status"] == "failed"
    assert result["task_id"] == task_id
    assert result["error"].startswith(f"invalid task payload, not executed: {field}")


async def test_a_transient_failure_is_retried_by_a_worker_until_max_tries(
    settings: Settings, tmp_path: Path
) -> None:
    """End to end on the engine: Retry puts the job back, the last try records the failure."""
    agents_file = tmp_path / "agents.json"
    agents_file.write_text(
        json.dumps(
            {
                "agents": [
                    AgentConfig(name="remote", mode="api", endpoint=CLOSED_PORT_URL).model_dump(mode="json")
                ]
            }
        )
    )
    tuned = settings.model_copy(
        update={"max_tries": 3, "retry_backoff_s": 0.0, "agents_file": agents_file, "poll_interval_s": 0.02}
    )
    task = AgentTask(id="t1", title="call the endpoint", agent="remote")
    async with FakeBackend(tuned.queue_name) as backend:
        pool = backend.pool()
        backend.worker(**worker_options(tuned), ctx={SETTINGS_KEY: tuned, EMBEDDED_KEY: True})
        store = BatchStore(pool, queue_name=tuned.queue_name, keep_result_s=60)

        await store.submit("b1", [task])
        job_id = job_id_for("b1", "t1")
        raw = await Job(job_id, pool, _queue_name=tuned.queue_name, _deserializer=job_deserializer).result(
            timeout=10, poll_delay=0.01
        )

        assert raw["status"] == "failed"
        assert raw["attempts"] == 3
        assert "cannot reach" in raw["error"]
        assert (await pool.get(f"arq:result:{job_id}")) is not None
        result = result_from_arq(await pool.get(f"arq:result:{job_id}"), job_id)
        assert (result.status, result.attempts) == (ExecutionStatus.FAILED, 3)
        assert await store.states("b1") == {"t1": ExecutionStatus.FAILED}
        retries = [event async for event in _events(pool, "b1") if event == "task.retrying"]
        assert len(retries) == 2


# -- worker settings ------------------------------------------------------------------------------


def test_worker_options_map_settings_to_arq_worker_arguments(settings: Settings) -> None:
    options = worker_options(settings)

    (function,) = options["functions"]
    assert set(options) <= set(inspect.signature(Worker).parameters)
    assert function.name == JOB_NAME
    assert function.coroutine is execute_task
    assert function.timeout_s == settings.job_timeout_s + JOB_TIMEOUT_GRACE_S
    assert function.max_tries == settings.max_tries
    assert options["job_timeout"] == settings.job_timeout_s + JOB_TIMEOUT_GRACE_S
    assert (options["queue_name"], options["max_jobs"]) == (settings.queue_name, settings.max_jobs)
    assert options["poll_delay"] == settings.poll_interval_s
    assert options["job_completion_wait"] == settings.shutdown_grace_s


@pytest.fixture
def unbuilt_worker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget a WorkerSettings built by an earlier test; the old state comes back afterwards."""
    monkeypatch.setitem(jobs.__dict__, "WorkerSettings", None)
    monkeypatch.delitem(jobs.__dict__, "WorkerSettings")


@pytest.mark.usefixtures("unbuilt_worker_settings")
def test_worker_settings_is_built_from_the_environment_on_first_access(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CODITECT_QUEUE_NAME", "q-from-env")
    monkeypatch.setenv("CODITECT_MAX_JOBS", "7")
    monkeypatch.setenv("CODITECT_REDIS_URL", "redis://redis.example:6390/2")
    assert "WorkerSettings" not in vars(jobs)

    settings_cls = jobs.WorkerSettings

    assert vars(jobs)["WorkerSettings"] is settings_cls
    assert jobs.WorkerSettings is settings_cls, "built once"
    kwargs = get_kwargs(settings_cls)
    expected = {*worker_options(Settings(_env_file=None)), "redis_settings"}  # type: ignore[call-arg]
    assert set(kwargs) == expected
    assert all(name in settings_cls.__dict__ for name in expected), "ARQ reads the class __dict__ only"
    assert kwargs["queue_name"] == "q-from-env"
    assert kwargs["max_jobs"] == 7
    assert kwargs["job_serializer"] is job_serializer
    assert kwargs["job_deserializer"] is job_deserializer
    assert kwargs["allow_abort_jobs"] is True
    assert kwargs["log_results"] is False
    redis_settings = kwargs["redis_settings"]
    assert isinstance(redis_settings, RedisSettings)
    assert (redis_settings.host, redis_settings.port, redis_settings.database) == ("redis.example", 6390, 2)


def test_worker_settings_class_has_every_attribute_on_the_class(settings: Settings) -> None:
    settings_cls = worker_settings_class(settings.model_copy(update={"queue_name": "q2"}))

    assert settings_cls.__name__ == "WorkerSettings"
    assert settings_cls.__module__ == "coditect.jobs"
    assert get_kwargs(settings_cls)["queue_name"] == "q2"
    assert set(get_kwargs(settings_cls)) == {*worker_options(settings), "redis_settings"}


def test_other_missing_attributes_still_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = jobs.NoSuchThing


def test_importing_the_module_does_not_read_the_environment(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import coditect.jobs
        print("imported")
        try:
            coditect.jobs.WorkerSettings
        except Exception as err:
            print("refused", type(err).__name__, "max_jobs" in str(err))
        """
    )
    env = {"CODITECT_MAX_JOBS": "0", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])}

    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["imported", "refused ValidationError True"]


async def test_startup_creates_the_executor_and_shutdown_closes_it(settings: Settings) -> None:
    ctx: dict[str, Any] = {
        SETTINGS_KEY: settings, EMBEDDED_KEY: True, WORKER_KEY: object(), "redis": fakeredis.FakeAsyncRedis(),
    }  # fmt: skip

    await jobs.startup(ctx)
    executor = ctx[EXECUTOR_KEY]
    await jobs.shutdown(ctx)

    assert isinstance(executor, TaskExecutor)
    assert EXECUTOR_KEY not in ctx
    with pytest.raises(RuntimeError, match="closed"):
        executor.llm_factory.create()
    await jobs.shutdown(ctx)  # a second shutdown is harmless


async def test_startup_refuses_a_plain_arq_worker(settings: Settings) -> None:
    # A plain arq.worker.Worker puts no coditect_worker in ctx: coditect's job needs the engine.
    ctx: dict[str, Any] = {SETTINGS_KEY: settings, EMBEDDED_KEY: True, "redis": object()}

    with pytest.raises(RuntimeError) as caught:
        await jobs.startup(ctx)

    assert str(caught.value) == (
        "coditect's job needs coditect's engine, but this is a plain arq.worker.Worker: start it with "
        "'coditect worker' or 'arq coditect.jobs.WorkerSettings', or build it with "
        "coditect.engine.create.create_worker()"
    )
    assert EXECUTOR_KEY not in ctx


@pytest.mark.usefixtures("unbuilt_worker_settings")
def test_looking_up_worker_settings_routes_arqs_create_worker_to_coditect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def plain(settings_cls: Any, **kwargs: Any) -> Any:
        return "plain worker"

    monkeypatch.setattr(arq.worker, "create_worker", plain)
    monkeypatch.setenv("CODITECT_REDIS_URL", "redis://127.0.0.1:9/0")

    settings_cls = jobs.WorkerSettings

    assert arq.worker.create_worker is not plain
    assert arq.worker.create_worker({"functions": []}) == "plain worker"
    assert settings_cls.coditect_settings.redis_url == "redis://127.0.0.1:9/0"


async def _events(pool: Any, batch_id: str) -> Any:
    for _, fields in await pool.xrange(f"coditect:events:{batch_id}"):
        yield fields[b"type"].decode()
