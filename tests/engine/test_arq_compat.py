"""How coditect plugs into ARQ: the version check, ``install()`` (ARQ's ``create_worker`` routes
coditect's settings to CoditectWorker) and ``run_job_entry()`` (wrappers of ``Worker.run_job``)."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator
from typing import Any

import arq.cli
import arq.version
import arq.worker
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker, func

import coditect.engine.arq_compat as arq_compat
from coditect.engine.arq_compat import coditect_settings_of, install, run_job_entry
from coditect.engine.worker import CoditectWorker
from coditect.errors import ConfigurationError
from coditect.jobs import worker_settings_class
from coditect.settings import Settings
from tests.engine.support import Probe, echo, result_of
from tests.support.fake_backend import FakeBackend

# -- the version ----------------------------------------------------------------------------------


@pytest.fixture
def reload_after(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Reload arq_compat with the real ARQ version after the test (which reloads it with another)."""
    yield
    monkeypatch.undo()  # the real version back first, whatever order pytest tears fixtures down in
    importlib.reload(arq_compat)


@pytest.mark.usefixtures("reload_after")
@pytest.mark.parametrize("version", ["0.27.0", "0.29.0", "1.0.0", "0.2.8"])
def test_an_unsupported_arq_fails_at_import(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(arq.version, "VERSION", version)

    with pytest.raises(ImportError) as caught:
        importlib.reload(arq_compat)

    assert str(caught.value) == (
        f"coditect's worker engine supports arq 0.28.x, but arq {version} is installed: "
        "install the version in coditect's requirements (pip install 'arq==0.28.*')"
    )


@pytest.mark.usefixtures("reload_after")
def test_any_arq_0_28_release_is_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arq.version, "VERSION", "0.28.7")

    module = importlib.reload(arq_compat)

    assert module.ARQ_VERSION == "0.28.7"


# -- install() ------------------------------------------------------------------------------------


def _plain_create_worker(settings_cls: Any, **kwargs: Any) -> Any:
    return ("plain", settings_cls, kwargs)


@pytest.fixture
def arq_unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """ARQ's create_worker as if coditect had never installed itself (restored after the test)."""
    monkeypatch.setattr(arq.worker, "create_worker", _plain_create_worker)
    monkeypatch.setattr(arq.cli, "create_worker", _plain_create_worker)


@pytest.mark.usefixtures("arq_unpatched")
async def test_install_routes_coditect_settings_to_coditect_workers_and_the_rest_to_arq(
    settings: Settings,
) -> None:
    coditect_cls = worker_settings_class(settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"}))

    install()
    install()  # idempotent: one wrapper

    wrapper = arq.worker.create_worker
    assert wrapper is not _plain_create_worker
    assert arq.cli.create_worker is wrapper
    assert getattr(wrapper, "__wrapped__", None) is None
    worker = wrapper(coditect_cls, handle_signals=False)
    assert isinstance(worker, CoditectWorker)
    assert worker.queue_name == settings.queue_name
    plain = {"functions": []}
    assert wrapper(plain, burst=True) == ("plain", plain, {"burst": True})
    await worker.close()


@pytest.mark.usefixtures("arq_unpatched")
async def test_install_after_another_wrapper_keeps_it(settings: Settings) -> None:
    seen: list[Any] = []
    inner = arq.worker.create_worker

    def integration(settings_cls: Any, **kwargs: Any) -> Any:
        seen.append(settings_cls)
        return inner(settings_cls, **kwargs)

    arq.worker.create_worker = integration  # an integration installed first (monkeypatch restores it)
    install()
    coditect_cls = worker_settings_class(settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"}))

    worker = arq.worker.create_worker(coditect_cls, handle_signals=False)
    plain = arq.worker.create_worker({"functions": []})

    assert isinstance(worker, CoditectWorker)
    assert plain[0] == "plain"
    assert seen == [{"functions": []}], "a coditect settings class goes straight to coditect's engine"
    await worker.close()


def test_coditect_settings_are_found_on_a_class_or_a_dict(settings: Settings) -> None:
    cls = worker_settings_class(settings)

    assert coditect_settings_of(cls) is settings
    assert coditect_settings_of({"coditect_settings": settings}) is settings
    assert coditect_settings_of({"functions": []}) is None
    assert coditect_settings_of(object) is None


# -- run_job_entry() ------------------------------------------------------------------------------


def test_with_arqs_own_run_job_the_entry_is_the_workers_run_job() -> None:
    assert run_job_entry(CoditectWorker) is CoditectWorker.run_job


def _closure_wrapper(seen: list[str]) -> Any:
    original = Worker.run_job

    async def traced(self: Worker, job_id: str, score: int) -> None:
        seen.append(job_id)
        return await original(self, job_id, score)

    return traced


def _nested_wrapper(seen: list[str]) -> Any:
    original = Worker.run_job

    def make() -> Any:
        @functools.wraps(original)
        async def inner(self: Worker, job_id: str, score: int) -> None:
            seen.append(job_id)
            return await original(self, job_id, score)

        return inner

    wrapped = make()

    async def outer(self: Worker, job_id: str, score: int) -> None:
        return await wrapped(self, job_id, score)

    return outer


@pytest.mark.parametrize("make_wrapper", [_closure_wrapper, _nested_wrapper], ids=["closure", "nested"])
async def test_a_wrapper_of_arqs_run_job_sees_every_job_the_engine_runs(
    pool: ArqRedis, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, make_wrapper: Any
) -> None:
    seen: list[str] = []
    monkeypatch.setattr(Worker, "run_job", make_wrapper(seen))
    probe = Probe()
    backend.worker([func(echo, name="echo")], ctx={"probe": probe})

    for i in range(3):
        await pool.enqueue_job("echo", i, _job_id=f"j{i}")
    results = [(await result_of(pool, f"j{i}"))["value"] for i in range(3)]

    assert results == [0, 1, 2]
    assert sorted(seen) == ["j0", "j1", "j2"]
    assert Worker.__dict__["run_job"] is not CoditectWorker.__dict__["run_job"]


ORIGINAL_RUN_JOB = Worker.run_job


async def _global_wrapper(self: Worker, job_id: str, score: int) -> None:
    return await ORIGINAL_RUN_JOB(self, job_id, score)  # a module global: nothing to re-bind


async def test_a_wrapper_that_cannot_be_rebound_stops_the_worker_with_the_reason(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Worker, "run_job", _global_wrapper)

    with pytest.raises(ConfigurationError) as caught:
        CoditectWorker([func(echo, name="echo")], redis_pool=backend.pool(), handle_signals=False)

    assert str(caught.value) == (
        f"arq.worker.Worker.run_job was replaced by {__name__}._global_wrapper, which coditect cannot "
        "apply to its engine (it does not call ARQ's run_job through a closure); without it that "
        "integration would see none of the jobs, so the worker does not start"
    )
