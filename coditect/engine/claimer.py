"""Claims that survive a lost reply.

The claim script runs in Redis whether or not its reply reaches the worker. A reply lost on the way
(a connection reset, or gone silent) used to leave the jobs it claimed held by this worker's token
with nobody running them until their lease ran out: one whole ``CODITECT_LEASE_S``. So each claim
carries a sequence number, ``claim.lua`` keeps the worker's last claim for one lease, and a worker
whose claim call failed first asks for that claim again (``reclaim.lua``: the jobs it still holds,
their leases renewed) before it claims more. A claim's reply is awaited for a third of a lease, so
that the jobs are recovered well before anyone else may take them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from arq.connections import ArqRedis

from coditect.clock import now_ms
from coditect.held import HeldConnections, HeldScript
from coditect.keys import leases_key
from coditect.lua import script

__all__ = ["Claimer"]

logger = logging.getLogger(__name__)


class Claimer:
    """Calls the claim script for one worker, and recovers a claim whose reply was lost. With
    ``held``, the scripts run on those connections, else through ``pool``'s."""

    def __init__(
        self,
        pool: ArqRedis,
        *,
        queue_name: str,
        token: str,
        lease_ms: int,
        held: HeldConnections | None = None,
    ) -> None:
        claim, reclaim = pool.register_script(script("claim")), pool.register_script(script("reclaim"))
        self._claim: Callable[..., Awaitable[Any]] = HeldScript(held, claim) if held else claim
        self._reclaim: Callable[..., Awaitable[Any]] = HeldScript(held, reclaim) if held else reclaim
        self._keys = [queue_name, leases_key(queue_name)]
        self._token = token
        self._lease_ms = lease_ms
        self.reply_timeout_s = lease_ms / 3000
        self._sequence = 0
        self._unanswered: int | None = None

    async def claim(self, args: Sequence[Any], only: Sequence[str] = ()) -> list[list[Any]]:
        """The claim script's rows for ``args`` (its first ten ARGV), or a lost claim's rows first."""
        if self._unanswered is not None:
            rows = await self._recover(self._unanswered)
            if rows:
                return rows
        self._sequence += 1
        self._unanswered = self._sequence
        async with asyncio.timeout(self.reply_timeout_s):
            rows = await self._claim(keys=self._keys, args=[*args, self._sequence, *only])
        self._unanswered = None
        return list(rows)

    async def _recover(self, sequence: int) -> list[list[Any]]:
        async with asyncio.timeout(self.reply_timeout_s):
            rows = await self._reclaim(
                keys=self._keys, args=[now_ms(), self._lease_ms, self._token, sequence]
            )
        self._unanswered = None
        if rows:
            logger.warning(
                "claim %d: its reply was lost; %d job(s) it claimed recovered", sequence, len(rows)
            )
        return list(rows)
