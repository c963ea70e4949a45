"""How coditect plugs into ARQ 0.28: the one module that reaches into ARQ's internals.

1. **The ``arq`` command.** ``arq coditect.jobs.WorkerSettings`` builds its worker with
   ``arq.worker.create_worker`` (``arq.cli.create_worker`` with ``--watch``), which always makes a
   plain ``arq.worker.Worker``. ``install()`` wraps that function: a settings class that carries
   coditect's settings (``coditect.jobs.WorkerSettings`` or a subclass of it) gets a
   ``CoditectWorker`` from ``coditect.engine.create.create_worker``; every other settings class goes
   to the function it wrapped, unchanged. (sentry-sdk's ARQ integration wraps the same function the
   same way; initialise it after importing ``coditect.jobs`` so that both wrappers apply.)
2. **Integrations that wrap ``Worker.run_job``** (sentry-sdk's does, to trace each job) patch ARQ's
   base class, which ``CoditectWorker`` overrides. ``run_job_entry()`` re-binds such a wrapper to
   call ``CoditectWorker.run_job`` where it called ARQ's, so the integration sees every job; a
   wrapper it cannot re-bind stops the worker at start with the reason.
3. **The version.** Both rely on ARQ 0.28's internals, so any other ARQ fails at import, loudly.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import arq.worker
from arq.version import VERSION as ARQ_VERSION

from coditect.errors import ConfigurationError

if TYPE_CHECKING:
    from arq.worker import Worker

__all__ = ["SUPPORTED_ARQ", "coditect_settings_of", "install", "run_job_entry"]

SUPPORTED_ARQ = "0.28."
SETTINGS_MARK = "coditect_settings"

if not ARQ_VERSION.startswith(SUPPORTED_ARQ):
    raise ImportError(
        f"coditect's worker engine supports arq {SUPPORTED_ARQ}x, but arq {ARQ_VERSION} is installed: "
        "install the version in coditect's requirements (pip install 'arq==0.28.*')"
    )

_RunJob = Callable[["Worker", str, int], Awaitable[None]]


def coditect_settings_of(settings_cls: Any) -> Any:
    """coditect's ``Settings`` carried by an ARQ settings class (or dict), else None."""
    if isinstance(settings_cls, dict):
        return settings_cls.get(SETTINGS_MARK)
    return getattr(settings_cls, SETTINGS_MARK, None)


def install() -> None:
    """Route coditect's settings classes to ``CoditectWorker`` in ARQ's CLI (idempotent)."""
    previous = arq.worker.create_worker
    if getattr(previous, "_coditect", False):
        return

    def create_worker(settings_cls: Any, **kwargs: Any) -> Worker:
        settings = coditect_settings_of(settings_cls)
        if settings is None:
            return previous(settings_cls, **kwargs)
        from coditect.engine.create import create_worker as create_coditect_worker
        from coditect.logs import ensure_worker_logging

        # ARQ's command has configured its log handlers by now: give them coditect's format and
        # filters before the worker's first line, not at on_startup (after ARQ's first two).
        ensure_worker_logging(settings)
        return create_coditect_worker(settings_cls, **kwargs)

    create_worker._coditect = True  # type: ignore[attr-defined]
    create_worker.__doc__ = previous.__doc__
    arq.worker.create_worker = create_worker
    cli = __import__("sys").modules.get("arq.cli")
    if cli is not None and getattr(cli, "create_worker", None) is previous:
        cli.create_worker = create_worker


def _is_arq_run_job(value: object) -> bool:
    # By its code, not its names: functools.wraps gives a wrapper ARQ's __module__ and __qualname__.
    return (
        isinstance(value, types.FunctionType)
        and value.__code__.co_filename == arq.worker.__file__
        and value.__code__.co_qualname == "Worker.run_job"
    )


def _rebind(wrapper: types.FunctionType, replacement: _RunJob, depth: int = 0) -> types.FunctionType | None:
    """A copy of ``wrapper`` whose closure calls ``replacement`` where it called ARQ's run_job."""
    if depth > 5 or not wrapper.__closure__:
        return None
    cells = []
    found = False
    for cell in wrapper.__closure__:
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            cells.append(cell)
            continue
        if _is_arq_run_job(value):
            cells.append(types.CellType(replacement))
            found = True
        elif isinstance(value, types.FunctionType) and not found:
            inner = _rebind(value, replacement, depth + 1)
            cells.append(types.CellType(inner) if inner is not None else cell)
            found = inner is not None
        else:
            cells.append(cell)
    if not found:
        return None
    copy = types.FunctionType(
        wrapper.__code__, wrapper.__globals__, wrapper.__name__, wrapper.__defaults__, tuple(cells)
    )
    copy.__kwdefaults__ = wrapper.__kwdefaults__
    copy.__dict__.update(wrapper.__dict__)
    copy.__qualname__ = wrapper.__qualname__
    return copy


def run_job_entry(worker_cls: type[Worker]) -> _RunJob:
    """What the engine calls for each job: ``worker_cls.run_job``, inside any integration's wrapper."""
    own: _RunJob = worker_cls.run_job
    # ARQ's own Worker class, found by what it is (integrations patch its attributes in place).
    arq_worker = next(
        c for c in worker_cls.__mro__ if c.__module__ == "arq.worker" and c.__name__ == "Worker"
    )
    current = arq_worker.__dict__["run_job"]
    if _is_arq_run_job(current):
        return own
    rebound = _rebind(current, own) if isinstance(current, types.FunctionType) else None
    if rebound is None:
        where = f"{getattr(current, '__module__', '?')}.{getattr(current, '__qualname__', repr(current))}"
        raise ConfigurationError(
            f"arq.worker.Worker.run_job was replaced by {where}, which coditect cannot apply to its "
            "engine (it does not call ARQ's run_job through a closure); without it that integration "
            "would see none of the jobs, so the worker does not start"
        )
    return rebound
