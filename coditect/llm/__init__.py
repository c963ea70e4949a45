"""LLM providers behind one seam: ``BaseLlm.generate_content_async``."""

from coditect.llm.base import BaseLlm, LlmRequest, LlmResponse, Message
from coditect.llm.factory import LlmFactory
from coditect.llm.offline import OfflineLlm

__all__ = ["BaseLlm", "LlmFactory", "LlmRequest", "LlmResponse", "Message", "OfflineLlm"]
