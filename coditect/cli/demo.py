"""The sample project ``coditect demo`` runs: six tasks across the built-in agents, one dependent."""

from __future__ import annotations

from typing import Any

__all__ = ["DEMO_LATENCY_S", "DEMO_TASKS"]

DEMO_LATENCY_S = 0.5

DEMO_TASKS: tuple[dict[str, Any], ...] = (
    {
        "id": "research",
        "agent": "researcher",
        "title": "Survey job queues for asyncio Python",
        "description": "Compare ARQ, SAQ and Celery for running LLM calls concurrently.",
    },
    {
        "id": "outline",
        "agent": "writer",
        "title": "Outline a guide to running LLM agents in parallel",
        "description": "Five sections, one line each.",
    },
    {
        "id": "code",
        "agent": "coder",
        "title": "Write an asyncio function that runs three coroutines concurrently",
        "description": "Use asyncio.TaskGroup and return the results in order.",
    },
    {
        "id": "faq",
        "agent": "default",
        "title": "List five questions a newcomer asks about task queues",
    },
    {
        "id": "summary",
        "agent": "writer",
        "title": "Summarise ADR-001 in three sentences",
        "description": "Async end to end: orchestrator, executor, LLM factory, provider on one event loop.",
    },
    {
        "id": "review",
        "agent": "reviewer",
        "title": "Review the outline of the guide",
        "description": "Point out missing sections and unclear steps.",
        "depends_on": ["outline"],
    },
)
