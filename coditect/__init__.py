"""coditect: run LLM agent tasks asynchronously and in parallel on ARQ worker processes.

Public names are imported on first use, so that ``coditect --help`` and a worker start fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AgentConfig",
    "AgentTask",
    "BaseLlm",
    "ExecutionResult",
    "ExecutionStatus",
    "LlmFactory",
    "ProjectOrchestrator",
    "Settings",
    "TaskExecutor",
    "TokenUsage",
]

_WHERE = {
    "AgentConfig": "coditect.models",
    "AgentTask": "coditect.models",
    "ExecutionResult": "coditect.models",
    "ExecutionStatus": "coditect.models",
    "TokenUsage": "coditect.models",
    "BaseLlm": "coditect.llm.base",
    "LlmFactory": "coditect.llm.factory",
    "ProjectOrchestrator": "coditect.client.orchestrator",
    "Settings": "coditect.settings",
    "TaskExecutor": "coditect.execution.executor",
}

if TYPE_CHECKING:
    from coditect.client.orchestrator import ProjectOrchestrator
    from coditect.execution.executor import TaskExecutor
    from coditect.llm.base import BaseLlm
    from coditect.llm.factory import LlmFactory
    from coditect.models import AgentConfig, AgentTask, ExecutionResult, ExecutionStatus, TokenUsage
    from coditect.settings import Settings


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'coditect' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
