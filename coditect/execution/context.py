"""What a task's run borrows from whoever runs it, and what a python agent is handed.

``RunContext`` comes from the engine (or defaults, when ``TaskExecutor.execute`` is called directly):
a way to wait without holding a worker slot, the outputs of the task's dependencies, and where
delegated children go. ``AgentContext`` is the ``ctx`` of a python agent's function.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, overload

from coditect.models import AgentTask, ExecutionResult, TokenUsage

if TYPE_CHECKING:
    from coditect.llm.base import LlmResponse, Message

__all__ = ["AgentContext", "Delegator", "RunContext", "child_id", "no_slot"]


@asynccontextmanager
async def no_slot() -> AsyncIterator[None]:
    """``idle()`` where there is no worker slot to give back (a run outside the engine)."""
    yield


class Delegator(Protocol):
    """Runs a parent's children and returns their results in order."""

    async def delegate(
        self, parent: AgentTask, children: Sequence[AgentTask], depth: int
    ) -> list[ExecutionResult]: ...


@dataclass(frozen=True, slots=True)
class RunContext:
    """A run's surroundings. ``delegator`` None: delegated children run in this process."""

    idle: Callable[[], AbstractAsyncContextManager[None]] = no_slot
    inputs: Mapping[str, str] = field(default_factory=dict)
    delegator: Delegator | None = None
    depth: int = 0
    on_capacity_wait: Callable[[str, str, float], None] | None = None  # (provider, model, seconds)


def child_id(parent: AgentTask, child: AgentTask, position: int) -> str:
    """A child's id derived from its parent's, so a re-run parent names the same children again:
    ``<parent>.<child's own id>`` when the agent chose one, else ``<parent>.<position>`` (from 1)."""
    own = child.id if "id" in child.model_fields_set else str(position)
    return f"{parent.id}.{own}"


class AgentContext:
    """The ``ctx`` of a python agent: ``await ctx.delegate(task | [tasks])``, ``await ctx.llm(messages)``."""

    def __init__(
        self,
        task: AgentTask,
        run: RunContext,
        *,
        delegate: Callable[[Sequence[AgentTask]], Awaitable[list[ExecutionResult]]],
        llm: Callable[[Sequence[Message], str | None, int | None], Awaitable[LlmResponse]],
    ) -> None:
        self.task = task
        self.inputs: Mapping[str, str] = run.inputs
        self.depth = run.depth
        self.usage = TokenUsage()
        self.provider: str | None = None  # of the model calls made through ``llm``
        self.model: str | None = None
        self._delegate = delegate
        self._llm = llm
        self._delegated = 0

    @overload
    async def delegate(self, tasks: AgentTask) -> ExecutionResult: ...
    @overload
    async def delegate(self, tasks: Sequence[AgentTask]) -> list[ExecutionResult]: ...

    async def delegate(
        self, tasks: AgentTask | Sequence[AgentTask]
    ) -> ExecutionResult | list[ExecutionResult]:
        """Hand tasks to other agents and wait for their results (one result, or a list in order).

        The children are tasks of the same batch, named after this task (``child_id``); while they
        run, this task does not hold a worker slot.
        """
        single = isinstance(tasks, AgentTask)
        batch = [tasks] if isinstance(tasks, AgentTask) else list(tasks)
        named = []
        for child in batch:
            self._delegated += 1
            named.append(child.model_copy(update={"id": child_id(self.task, child, self._delegated)}))
        results = await self._delegate(named)
        return results[0] if single else results

    async def llm(
        self, messages: Sequence[Message] | str, *, system: str | None = None, max_tokens: int | None = None
    ) -> LlmResponse:
        """Ask this agent's model (its provider, model and system prompt unless given here)."""
        from coditect.llm.base import Message

        turns = [Message("user", messages)] if isinstance(messages, str) else list(messages)
        response = await self._llm(turns, system, max_tokens)
        self.usage = self.usage + response.usage
        self.provider, self.model = response.provider, response.model
        return response
