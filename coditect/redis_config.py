"""What coditect needs from Redis's configuration, checked where the Redis user may look.

- ``maxmemory-policy noeviction``. Any other policy lets a full Redis evict keys, and an evicted job
  payload, batch record or lease is work lost without a result, not a failure. Workers and
  orchestrators say so once (``PolicyCheck``) when they see another policy.
- Room for a batch. Under ``noeviction`` a batch that does not fit in ``maxmemory - used_memory``
  is refused before anything is written (``ServerInfo.room_bytes``; the estimate is the client's).

Both are read with INFO, which the least-privilege ACL in the README leaves out (``-@dangerous``):
then coditect says once that it cannot check, and carries on without the checks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

__all__ = ["NOEVICTION", "PolicyCheck", "ServerInfo", "describe_server", "human_bytes", "read_server_info"]

logger = logging.getLogger(__name__)

NOEVICTION = "noeviction"


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What INFO says about the server's version, clients and memory (bytes; ``maxmemory`` 0: none)."""

    version: str
    clients: int
    used_memory: int
    maxmemory: int
    policy: str

    @property
    def room_bytes(self) -> int | None:
        """Bytes that may still be written before Redis refuses writes; None when it does not refuse."""
        if not self.maxmemory or self.policy != NOEVICTION:
            return None
        return max(0, self.maxmemory - self.used_memory)


async def read_server_info(redis: Redis, section: str | None = None) -> ServerInfo | None:
    """The server's INFO (one ``section``, or the default ones), or None when this Redis user may not
    run it. ``memory`` is enough for the checks: the memory figures and the policy."""
    try:
        info: dict[str, Any] = await redis.info(section)
    except NoPermissionError:
        return None
    except ResponseError:  # a server without INFO (the embedded fakeredis): no limit, no eviction
        info = {}
    return ServerInfo(
        version=str(info.get("redis_version", "?")),
        clients=_int(info.get("connected_clients")),
        used_memory=_int(info.get("used_memory")),
        maxmemory=_int(info.get("maxmemory")),
        policy=str(info.get("maxmemory_policy", NOEVICTION)),
    )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def human_bytes(count: int) -> str:
    """``12.0 MB``: bytes in the units Redis's ``maxmemory`` setting reads best in."""
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class PolicyCheck:
    """Says once per process side (a worker, an orchestrator) what is wrong with the eviction policy."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.done = False

    def check(self, info: ServerInfo | None) -> None:
        if self.done:
            return
        self.done = True
        if info is None:
            logger.warning(
                "%s cannot check Redis's maxmemory-policy: this Redis user may not run INFO "
                "(coditect needs maxmemory-policy noeviction; see the README, Redis configuration)",
                self.who,
            )
        elif info.policy != NOEVICTION:
            logger.warning(
                "Redis maxmemory-policy is %s: a full Redis evicts keys, and an evicted job, batch or lease "
                "is work lost without a result; set maxmemory-policy noeviction for coditect's Redis",
                info.policy,
            )


async def describe_server(redis: Redis, log: Callable[[str], Any], policy: PolicyCheck) -> ServerInfo | None:
    """ARQ's start-up line about the server (what the ACL lets this user read), then the policy check."""
    info = await read_server_info(redis)
    try:
        keys = await redis.dbsize()
    except NoPermissionError:
        keys = None
    if info is not None:
        log(
            f"redis_version={info.version} mem_usage={human_bytes(info.used_memory)} "
            f"clients_connected={info.clients} db_keys={keys}"
        )
    elif keys is not None:
        log(f"redis_version=? db_keys={keys} (this Redis user may not run INFO)")
    policy.check(info)
    return info
