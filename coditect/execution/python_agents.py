"""Python agents: ``{"mode": "python", "entrypoint": "package.module:function"}``.

The function is ``async def function(task: AgentTask, ctx: AgentContext) -> str | dict``; a dict has
``output`` (text) and optionally ``usage`` (token counts, as in ``TokenUsage``). It may plan with the
agent's model (``await ctx.llm(messages)``) and hand work to other agents (``await ctx.delegate(...)``).
It runs in the worker's process and event loop: trusted code, like a legacy script.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

from pydantic import ValidationError

from coditect.errors import CoditectError, ConfigurationError
from coditect.execution.context import AgentContext
from coditect.models import AgentTask, TokenUsage

__all__ = ["call_python_agent", "load_entrypoint"]

AgentFunction = Callable[[AgentTask, AgentContext], Awaitable[Any]]


@cache
def load_entrypoint(entrypoint: str) -> AgentFunction:
    """The coroutine function named ``package.module:function``; ConfigurationError if it is not one."""
    module_name, _, attribute = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigurationError(
            f"python agent entrypoint {entrypoint}: cannot import {module_name}: {err}"
        ) from err
    function = getattr(module, attribute, None)
    if function is None:
        raise ConfigurationError(f"python agent entrypoint {entrypoint}: {module_name} has no {attribute!r}")
    if not inspect.iscoroutinefunction(function):
        raise ConfigurationError(
            f"python agent entrypoint {entrypoint}: expected 'async def {attribute}(task, ctx)'"
        )
    return function  # type: ignore[no-any-return]


async def call_python_agent(entrypoint: str, task: AgentTask, ctx: AgentContext) -> tuple[str, TokenUsage]:
    """Run the agent; its output text and the usage it reported itself (beside ``ctx.llm``'s)."""
    value = await load_entrypoint(entrypoint)(task, ctx)
    if isinstance(value, str):
        return value, TokenUsage()
    if isinstance(value, dict) and isinstance(value.get("output"), str):
        try:
            usage = TokenUsage.model_validate(value.get("usage") or {})
        except ValidationError as err:
            raise CoditectError(
                f"python agent {entrypoint} returned an invalid usage: {err.errors()[0]['msg']}"
            ) from err
        return value["output"], usage
    raise CoditectError(
        f"python agent {entrypoint} returned {type(value).__name__}; expected a str or a dict with 'output'"
    )
