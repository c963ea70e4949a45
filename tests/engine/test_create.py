"""Workers are built in one place: ``create_worker`` and the settings classes it reads, including a
subclass of ``coditect.jobs.WorkerSettings`` that adds to coditect's settings the ARQ way."""

from __future__ import annotations

from typing import Any

import pytest
from arq.connections import RedisSettings
from arq.cron import cron
from arq.worker import func, get_kwargs

from coditect.engine.create import WorkerSettingsBase, create_worker, worker_arguments
from coditect.engine.worker import CoditectWorker
from coditect.errors import ConfigurationError
from coditect.jobs import (
    execute_task,
    job_deserializer,
    job_serializer,
    shutdown,
    startup,
    worker_settings_class,
)
from coditect.settings import Settings

REDIS_URL = "redis://127.0.0.1:9/0"  # never contacted: building a worker opens no connection


@pytest.fixture
def base(settings: Settings) -> type[WorkerSettingsBase]:
    return worker_settings_class(settings.model_copy(update={"redis_url": REDIS_URL, "lease_s": 4.0}))


async def report(ctx: dict[str, Any]) -> str:
    return "report"


async def nightly(ctx: dict[str, Any]) -> None:
    return None


def _names(hook: Any) -> str:
    return str(getattr(hook, "__qualname__", hook))


def test_a_subclass_adds_functions_cron_jobs_hooks_and_options_and_keeps_coditects(
    base: type[WorkerSettingsBase],
) -> None:
    async def my_startup(ctx: dict[str, Any]) -> None: ...

    async def my_shutdown(ctx: dict[str, Any]) -> None: ...

    class Mine(base):  # type: ignore[valid-type,misc]
        functions = [report]
        cron_jobs = [cron(nightly, hour=3, minute=0)]
        on_startup = my_startup
        on_shutdown = my_shutdown
        max_jobs = 7

    kwargs = get_kwargs(Mine)  # what ARQ's CLI reads: the class's own attributes
    names = [func(f).name for f in kwargs["functions"]]
    assert names == ["execute_task", "report"]
    assert func(kwargs["functions"][0]).coroutine is execute_task
    assert [job.name for job in kwargs["cron_jobs"]] == ["cron:nightly"]
    assert _names(kwargs["on_startup"]) == f"{_names(startup)}+{_names(my_startup)}", "ours first"
    assert _names(kwargs["on_shutdown"]) == f"{_names(my_shutdown)}+{_names(shutdown)}", "ours last"
    assert kwargs["max_jobs"] == 7
    assert (kwargs["job_serializer"], kwargs["job_deserializer"]) == (job_serializer, job_deserializer)
    assert kwargs["queue_name"] == base.queue_name  # type: ignore[attr-defined]
    assert Mine.coditect_settings is base.coditect_settings


async def test_chained_hooks_run_both_in_order(base: type[WorkerSettingsBase]) -> None:
    calls: list[str] = []

    async def mine(ctx: dict[str, Any]) -> None:
        calls.append("mine")

    class Mine(base):  # type: ignore[valid-type,misc]
        on_job_start = mine
        after_job_end = mine

    async def ours(ctx: dict[str, Any]) -> None:
        calls.append("ours")

    class Ours(WorkerSettingsBase):
        coditect_settings = base.coditect_settings
        on_job_start = ours
        after_job_end = ours

    class Theirs(Ours):
        on_job_start = mine
        after_job_end = mine

    await Theirs.on_job_start({})  # type: ignore[misc,call-arg]
    await Theirs.after_job_end({})  # type: ignore[misc,call-arg]

    assert calls == ["ours", "mine", "mine", "ours"]
    assert Mine.on_job_start is mine, "coditect sets no on_job_start: nothing to chain"


def test_a_subclass_of_a_subclass_adds_to_both(base: type[WorkerSettingsBase]) -> None:
    class First(base):  # type: ignore[valid-type,misc]
        functions = [report]

    class Second(First):
        functions = [func(nightly, name="nightly")]

    assert [func(f).name for f in get_kwargs(Second)["functions"]] == ["execute_task", "report", "nightly"]


def test_a_subclass_cannot_change_the_serializer(base: type[WorkerSettingsBase]) -> None:
    with pytest.raises(TypeError) as caught:

        class Pickled(base):  # type: ignore[valid-type,misc]
            job_serializer = staticmethod(lambda obj: b"")

    assert str(caught.value) == (
        "test_a_subclass_cannot_change_the_serializer.<locals>.Pickled.job_serializer: coditect's jobs "
        "and results are JSON, so a subclass of coditect.jobs.WorkerSettings cannot change the serializer"
    )


def test_restating_coditects_serializer_is_allowed(base: type[WorkerSettingsBase]) -> None:
    class Same(base):  # type: ignore[valid-type,misc]
        job_serializer = job_serializer

    assert get_kwargs(Same)["job_serializer"] is job_serializer


def test_a_subclass_cannot_take_coditects_job_name(base: type[WorkerSettingsBase]) -> None:
    with pytest.raises(TypeError, match="'execute_task' is coditect's own job; register your function"):

        class Clash(base):  # type: ignore[valid-type,misc]
            functions = [func(report, name="execute_task")]


async def test_create_worker_builds_a_coditect_worker_from_a_settings_class(
    base: type[WorkerSettingsBase],
) -> None:
    class Mine(base):  # type: ignore[valid-type,misc]
        functions = [report]

    worker = create_worker(Mine, handle_signals=False, max_jobs=3)

    assert isinstance(worker, CoditectWorker)
    assert (worker.lease_s, worker.max_jobs) == (4.0, 3)
    assert set(worker.functions) == {"execute_task", "report"}
    assert isinstance(worker.redis_settings, RedisSettings)
    assert (worker.redis_settings.host, worker.redis_settings.port) == ("127.0.0.1", 9)
    await worker.close()


async def test_create_worker_takes_coditects_settings_or_a_dict_carrying_them(settings: Settings) -> None:
    shared = settings.model_copy(update={"redis_url": REDIS_URL, "worker_name": "w-1"})

    from_settings = create_worker(shared, handle_signals=False)
    from_dict = create_worker(
        {**worker_arguments(worker_settings_class(shared)), "coditect_settings": shared}, handle_signals=False
    )

    assert (from_settings.worker_name, from_dict.worker_name) == ("w-1", "w-1")
    assert from_settings.queue_name == from_dict.queue_name == shared.queue_name
    await from_settings.close()
    await from_dict.close()


def test_create_worker_refuses_a_settings_class_that_is_not_coditects() -> None:
    class Plain:
        functions = [report]
        redis_settings = RedisSettings(port=9)

    with pytest.raises(ConfigurationError, match=r"not a coditect settings class: subclass coditect\.jobs"):
        create_worker(Plain)


def test_create_worker_refuses_to_fall_back_to_a_default_redis(settings: Settings) -> None:
    # Embedded settings carry no Redis: a worker process would otherwise dial ARQ's localhost:6379.
    with pytest.raises(ConfigurationError, match=r"a worker needs a shared Redis: set CODITECT_REDIS_URL"):
        create_worker(settings)


def test_worker_arguments_are_the_worker_parameters_a_class_or_dict_holds(settings: Settings) -> None:
    cls = worker_settings_class(settings.model_copy(update={"redis_url": REDIS_URL}))

    arguments = worker_arguments(cls)

    assert arguments == get_kwargs(cls)
    assert "coditect_settings" not in arguments
    assert worker_arguments({"max_jobs": 2, "unrelated": 1}) == {"max_jobs": 2}
