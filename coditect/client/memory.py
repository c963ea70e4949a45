"""Will a batch fit in Redis's memory? Checked before anything of it is written.

Under ``maxmemory-policy noeviction`` Redis refuses a script whose first write finds it out of memory,
but a script that starts under the limit writes everything it was given: a batch that fits in one
call can take Redis far past ``maxmemory`` (and every worker's next write then fails). So the client
estimates what a batch adds and refuses it when INFO says there is not that much room.
"""

from __future__ import annotations

from collections.abc import Sequence

from coditect.errors import RedisRefusedError
from coditect.models import AgentTask
from coditect.redis_config import ServerInfo, human_bytes

__all__ = ["MEMORY_CHECK_MIN_BYTES", "check_room", "estimated_bytes"]

# A task's JSON besides its texts: the field names, quotes and the defaults (null timeout, {} metadata).
_JSON_FRAME = 100
# A batch estimated under this is not checked (INFO costs a round trip, a quarter of a one-task batch's):
# it cannot take Redis far past maxmemory, and once Redis is past it, it refuses the batch whole.
MEMORY_CHECK_MIN_BYTES = 1024 * 1024


def estimated_bytes(tasks: Sequence[AgentTask]) -> int:
    """What recording and enqueueing these tasks adds to Redis's memory, rounded up, from the lengths
    of their texts (no JSON is built: a big batch is serialized chunk by chunk, as it is sent).

    Each task's JSON is stored twice (the batch's task and its ARQ job), and the allocator rounds
    them up; its state, order, queue entry and events add about 700 bytes. Measured on Redis 7 with
    jemalloc: 2.1-2.6x the JSON, plus 650-850 bytes a task. Results come later and are not counted.
    """
    size = _JSON_FRAME * len(tasks)
    for task in tasks:
        title, description = task.title, task.description
        size += len(task.id) + len(task.agent)
        size += len(title) if title.isascii() else len(title.encode())
        size += len(description) if description.isascii() else len(description.encode())
        if task.depends_on:
            size += sum(len(dep) + 3 for dep in task.depends_on)
        if task.metadata:
            size += sum(len(key) + _utf8_len(str(value)) + 6 for key, value in task.metadata.items())
    return size * 5 // 2 + 1024 * len(tasks)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())  # isascii() is O(1) in CPython


def check_room(batch_id: str, need: int, server: ServerInfo) -> None:
    """Refuse, before anything is written, a batch of ``need`` bytes that would take Redis past
    ``maxmemory``."""
    room = server.room_bytes
    if room is not None and need > room:
        raise RedisRefusedError(
            f"Redis is out of memory (maxmemory {human_bytes(server.maxmemory)}, "
            f"{human_bytes(server.used_memory)} used; batch {batch_id} needs about {human_bytes(need)}): "
            "nothing was enqueued",
            cause="oom",
        )
