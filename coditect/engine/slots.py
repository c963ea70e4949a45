"""Worker slots: ``max_jobs`` counts the jobs that are working, not the ones waiting.

A job holds a slot from its claim to its end, except inside ``idle()``: a parent waiting for the
children it delegated, or a task waiting for rate-limit capacity, gives its slot back, so waiting
jobs can never fill the pool and starve the jobs they wait for. Leaving ``idle()`` takes a slot
again, ahead of new claims, in the order the jobs asked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

__all__ = ["Slot", "Slots"]


class Slot:
    """One job's hold on a slot."""

    __slots__ = ("_pool", "held")

    def __init__(self, pool: Slots) -> None:
        self._pool = pool
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._pool._give()

    @contextlib.asynccontextmanager
    async def idle(self) -> AsyncIterator[None]:
        """Give the slot back while the block waits; take one again (first in line) when it ends."""
        if not self.held:  # nested waits: the outer one already gave the slot back
            yield
            return
        self.release()
        try:
            yield
        finally:
            await self._pool._take_back()
            self.held = True


class Slots:
    """``size`` slots; ``on_free`` is called when a slot becomes free for a new claim while none was."""

    def __init__(self, size: int, on_free: Callable[[], None]) -> None:
        self.size = size
        self.busy = 0
        self._on_free = on_free
        self._returning: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        """Slots a claim may take now (jobs coming back from ``idle()`` go first)."""
        return max(0, self.size - self.busy - len(self._returning))

    def take(self) -> Slot:
        self.busy += 1
        return Slot(self)

    def _give(self) -> None:
        while self._returning:
            waiter = self._returning.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to a job leaving idle()
                return
        # With a slot free already, the claim loop is not waiting for one (it waits for work, and an
        # enqueue wakes it): only the first free slot is news.
        was_full = self.free == 0
        self.busy -= 1
        if was_full:
            self._on_free()

    async def _take_back(self) -> None:
        if self.busy < self.size and not self._returning:
            self.busy += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._returning.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give()  # handed a slot just as we were cancelled: pass it on
            else:
                self._returning.remove(waiter)
            raise
