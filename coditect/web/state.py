"""What the dashboard's handlers share: the orchestrator they read and act through, the guard, the
rate limits, the rolling activity, and an event set when the server is stopping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cached_property

from arq.connections import ArqRedis

from coditect.client.batches import BatchStore
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.llm.limits import RateLimit, load_limits_file
from coditect.secrets import Redactor
from coditect.settings import Settings
from coditect.web.activity import Activity
from coditect.web.capacity import ProviderOf, provider_resolver
from coditect.web.security import Guard

__all__ = ["Dashboard"]


@dataclass
class Dashboard:
    """One dashboard on one open orchestrator (which the caller opens and closes)."""

    orchestrator: ProjectOrchestrator
    guard: Guard
    limits: tuple[RateLimit, ...] = ()
    activity: Activity = field(default_factory=Activity)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def create(cls, orchestrator: ProjectOrchestrator, *, host: str = "127.0.0.1") -> Dashboard:
        """A dashboard with the token and the limits file of the orchestrator's settings.

        Raises ``ConfigurationError`` for a bad limits file.
        """
        settings = orchestrator.settings
        token = settings.dashboard_token.get_secret_value() if settings.dashboard_token else None
        limits = load_limits_file(settings.limits_file) if settings.limits_file is not None else ()
        return cls(orchestrator, Guard(token or None, bound_host=host), limits)

    @property
    def settings(self) -> Settings:
        return self.orchestrator.settings

    @property
    def store(self) -> BatchStore:
        return self.orchestrator.store

    @property
    def redis(self) -> ArqRedis:
        return self.orchestrator.redis

    @cached_property
    def redactor(self) -> Redactor:
        return Redactor.from_settings(self.settings)

    @cached_property
    def provider_of(self) -> ProviderOf:
        return provider_resolver(self.limits, self.orchestrator.agents, self.settings.provider)
