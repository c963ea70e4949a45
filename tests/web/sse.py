"""Reading Server-Sent Events in tests: each message as (event, id, data as JSON)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Message:
    event: str
    id: str | None
    data: dict[str, Any]


class EventStream:
    """The lines of one streamed response, read once: its first line, then its messages."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def first_line(self) -> str:
        """The stream's first line (``retry: ...``): once it is here, the server follows the stream."""
        async for line in self._lines:
            return line
        raise AssertionError("the stream ended before its first line")

    async def lines(self) -> list[str]:
        return [line async for line in self._lines]

    async def messages(self) -> AsyncIterator[Message]:
        """The messages; comments and the ``retry`` field are skipped."""
        event, event_id, data = "message", None, list[str]()
        async for line in self._lines:
            if not line:
                if data:
                    yield Message(event, event_id, json.loads("\n".join(data)))
                event, event_id, data = "message", None, []
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)
