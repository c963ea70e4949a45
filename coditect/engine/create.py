"""Workers are built here, and only here: ``coditect worker``, ``arq coditect.jobs.WorkerSettings``
(through ``coditect.engine.arq_compat``) and the embedded backend all call ``create_worker``.

A settings class is ARQ's: its attributes are ``Worker`` arguments. ``coditect.jobs.WorkerSettings``
is one, built from ``CODITECT_*``; a subclass adds to it the ARQ way (``functions``, ``cron_jobs``,
hooks, options) and keeps coditect's engine, queue, JSON serializer and job: ``WorkerSettingsBase``
merges the two on the subclass itself, because ARQ reads only a class's own attributes.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from typing import Any, ClassVar

from arq.worker import Worker, func

from coditect.engine.arq_compat import SETTINGS_MARK, coditect_settings_of
from coditect.engine.worker import CoditectWorker
from coditect.errors import ConfigurationError
from coditect.settings import Settings

__all__ = ["WorkerSettingsBase", "create_worker", "run_worker", "worker_arguments"]

Hook = Callable[[dict[Any, Any]], Awaitable[None]]

# coditect's start-up runs before a subclass's (which may use what it built); shut-down after.
_HOOKS_OURS_FIRST = ("on_startup", "on_job_start")
_HOOKS_OURS_LAST = ("on_shutdown", "on_job_end", "after_job_end")
_FIXED = ("job_serializer", "job_deserializer")


def _chain(first: Hook, second: Hook) -> Hook:
    async def both(ctx: dict[Any, Any]) -> None:
        await first(ctx)
        await second(ctx)

    both.__qualname__ = f"{getattr(first, '__qualname__', first)}+{getattr(second, '__qualname__', second)}"
    return both


class WorkerSettingsBase:
    """Base of ``coditect.jobs.WorkerSettings``; see the module docstring for what a subclass keeps."""

    coditect_settings: ClassVar[Settings]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        parent = next((base for base in cls.__mro__[1:] if SETTINGS_MARK in vars(base)), None)
        if parent is None:
            return  # coditect's own settings class: nothing to merge yet
        own = dict(vars(cls))
        for name, value in vars(parent).items():
            if name.startswith("__"):
                continue
            if name not in own:
                setattr(cls, name, value)
            elif name in _FIXED and own[name] is not value:
                raise TypeError(
                    f"{cls.__qualname__}.{name}: coditect's jobs and results are JSON, so a subclass of "
                    "coditect.jobs.WorkerSettings cannot change the serializer"
                )
            elif name == "functions":
                setattr(cls, name, _merged_functions(cls.__qualname__, value, own[name]))
            elif name == "cron_jobs":
                setattr(cls, name, [*(value or ()), *(own[name] or ())])
            elif name in _HOOKS_OURS_FIRST and value and own[name]:
                setattr(cls, name, _chain(value, own[name]))
            elif name in _HOOKS_OURS_LAST and value and own[name]:
                setattr(cls, name, _chain(own[name], value))


def _merged_functions(owner: str, ours: Any, theirs: Any) -> list[Any]:
    names = {func(f).name for f in ours}
    for function in theirs:
        name = func(function).name
        if name in names:
            raise TypeError(
                f"{owner}.functions: {name!r} is coditect's own job; "
                "register your function under another name"
            )
    return [*ours, *theirs]


@cache
def _worker_parameters() -> frozenset[str]:
    return frozenset(inspect.signature(Worker).parameters)


def worker_arguments(settings_cls: type | Mapping[str, Any]) -> dict[str, Any]:
    """The ``Worker`` arguments a settings class (or dict) holds, as ARQ's ``get_kwargs`` reads them."""
    items = settings_cls.items() if isinstance(settings_cls, Mapping) else vars(settings_cls).items()
    return {name: value for name, value in items if name in _worker_parameters()}


def create_worker(settings: Settings | type | Mapping[str, Any], **overrides: Any) -> CoditectWorker:
    """A ``CoditectWorker`` for ``settings`` (coditect's ``Settings``, or an ARQ settings class or dict
    carrying them), with ``overrides`` (ARQ ``Worker`` arguments) applied on top."""
    if isinstance(settings, Settings):
        from coditect.jobs import worker_settings_class

        settings = worker_settings_class(settings)
    ours = coditect_settings_of(settings)
    if not isinstance(ours, Settings):
        raise ConfigurationError(
            "not a coditect settings class: subclass coditect.jobs.WorkerSettings, "
            "or pass coditect's Settings"
        )
    arguments = {**worker_arguments(settings), **overrides}
    if arguments.get("redis_settings") is None and arguments.get("redis_pool") is None:
        raise ConfigurationError(
            "a worker needs a shared Redis: set CODITECT_REDIS_URL (or redis_settings on your "
            "WorkerSettings subclass); without one, 'coditect run' and 'coditect demo' start their "
            "own in-process workers"
        )
    return CoditectWorker(
        **arguments,
        lease_s=ours.lease_s,
        worker_name=ours.worker_name,
        events_max_len=ours.events_max_len,
        batch_keep_s=ours.keep_result_s,
    )


def run_worker(settings: Settings | type | Mapping[str, Any], **overrides: Any) -> CoditectWorker:
    """Build a worker and run it until it stops (ARQ's ``run_worker``: it owns the event loop)."""
    worker = create_worker(settings, **overrides)
    worker.run()
    return worker
