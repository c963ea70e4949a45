"""What a claim hands the worker: one row per job, read defensively.

A queue is shared with whoever can write to Redis, so a row can carry what no worker wrote: an id
that is not UTF-8, a score of ``-inf``, a retry counter that is not a number. Such a row must not
take the worker down: ``parse_rows`` turns the rows it can use into ``Claim``s and the others into
``Poison`` entries, which the worker sets aside in the dead-letter list.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis

from coditect.keys import (
    ABORT_SET,
    DEAD_LETTERS_KEY,
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    RETRY_PREFIX,
    leases_key,
)

__all__ = ["DEAD_LETTERS_MAX", "Claim", "Poison", "dead_letter", "parse_rows", "set_aside"]

# The dead-letter list keeps this many entries, newest first.
DEAD_LETTERS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Claim:
    """A job this worker now holds by lease. ``problem`` is set when it must fail without running."""

    job_id: str
    payload: bytes
    job_try: int
    score: int
    aborted: bool
    depth: int
    problem: str = ""
    budget: bool = False


@dataclass(frozen=True, slots=True)
class Poison:
    """A claimed queue entry that cannot even be named as a string: set aside, never run."""

    raw_id: bytes
    reason: str


def _score(value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if math.isfinite(number) else 0


def parse_rows(rows: list[list[Any]]) -> tuple[list[Claim], list[Poison]]:
    """Claims and poison entries from the claim script's rows."""
    claims: list[Claim] = []
    poison: list[Poison] = []
    for raw_id, payload, job_try, score, aborted, depth, problem, budget in rows:
        try:
            job_id = raw_id.decode()
        except UnicodeDecodeError:
            poison.append(Poison(raw_id, "job id is not UTF-8 text"))
            continue
        claims.append(
            Claim(
                job_id=job_id,
                payload=payload or b"",
                job_try=int(job_try),
                score=_score(score),
                aborted=bool(aborted),
                depth=int(depth or 0),
                problem=problem.decode(errors="replace")
                if isinstance(problem, bytes)
                else str(problem or ""),
                budget=bool(budget),
            )
        )
    return claims, poison


_JOB_KEY_PREFIXES = (JOB_PREFIX, RETRY_PREFIX, IN_PROGRESS_PREFIX)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def dead_letter(job_id: str, reason: str) -> str:
    """A dead-letter entry: JSON with the job id (``\\x`` escapes where it is not text) and why."""
    return json.dumps({"job_id": job_id, "reason": reason, "at_ms": int(time.time() * 1000)})


async def set_aside(redis: ArqRedis, queue_name: str, poison: list[Poison]) -> None:
    """Take poison entries out of the queue for good and record them in the dead-letter list."""
    async with redis.pipeline(transaction=True) as pipe:
        for entry in poison:
            shown = entry.raw_id.decode(errors="backslashreplace")
            pipe.zrem(queue_name, entry.raw_id)
            pipe.zrem(leases_key(queue_name), entry.raw_id)
            pipe.zrem(ABORT_SET, entry.raw_id)
            pipe.delete(
                *(prefix.encode() + entry.raw_id for prefix in (JOB_PREFIX, RETRY_PREFIX, IN_PROGRESS_PREFIX))
            )
            pipe.lpush(DEAD_LETTERS_KEY, dead_letter(shown, entry.reason))
        pipe.ltrim(DEAD_LETTERS_KEY, 0, DEAD_LETTERS_MAX - 1)
        await pipe.execute()
