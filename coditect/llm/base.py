"""The provider seam: messages in, text and token usage out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from coditect.models import TokenUsage

__all__ = ["BaseLlm", "LlmRequest", "LlmResponse", "Message"]


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """Everything but the messages: the knobs an agent sets for a call."""

    system: str = ""
    max_tokens: int = 1024


@dataclass(frozen=True, slots=True)
class LlmResponse:
    """What a provider returned: the text, the tokens it counted, and which model answered."""

    text: str
    provider: str
    model: str
    usage: TokenUsage = field(default_factory=TokenUsage)
    stop_reason: str | None = None


class BaseLlm(ABC):
    """A provider bound to one model. Instances are cheap; the HTTP client behind them is shared.

    ``generate_content_async`` raises ``TransientProviderError`` or ``PermanentProviderError``
    (``coditect.errors``) and nothing else on a failed call.
    """

    provider: ClassVar[str]

    def __init__(self, model: str) -> None:
        self.model = model

    @abstractmethod
    async def generate_content_async(
        self, messages: Sequence[Message], request: LlmRequest | None = None
    ) -> LlmResponse:
        """Send ``messages`` and return the reply."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} model={self.model!r}>"
