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

__all__ = ["MEMORY_CHECK_MIN_BYTES", "check_room", "estimated_bytes", "rough_bytes"]

# A batch estimated under this is not checked (INFO costs a round trip, a quarter of a one-task batch's):
# it cannot take Redis far past maxmemory, and once Redis is past it, it refuses the batch whole.
MEMORY_CHECK_MIN_BYTES = 1024 * 1024


def estimated_bytes(tasks_json: Sequence[str]) -> int:
    """What recording and enqueueing these tasks adds to Redis's memory, rounded up.

    Each task's JSON is stored twice (the batch's task and its ARQ job), and the allocator rounds
    them up; its state, order, queue entry and events add about 700 bytes. Measured on Redis 7 with
    jemalloc: 2.1-2.6x the JSON, plus 650-850 bytes a task. Results come later and are not counted.
    """
    return sum(len(text.encode()) for text in tasks_json) * 5 // 2 + 1024 * len(tasks_json)


def rough_bytes(tasks: Sequence[AgentTask]) -> int:
    """``estimated_bytes`` from the lengths of the tasks' texts, without building their JSON."""
    chars = sum(
        len(task.title) + len(task.description) + sum(len(k) + len(str(v)) for k, v in task.metadata.items())
        for task in tasks
    )
    return chars * 5 // 2 + 1024 * len(tasks)


def check_room(batch_id: str, tasks_json: Sequence[str], server: ServerInfo) -> None:
    """Refuse, before anything is written, a batch that would take Redis past ``maxmemory``."""
    room = server.room_bytes
    if room is None:
        return
    need = estimated_bytes(tasks_json)
    if need > room:
        raise RedisRefusedError(
            f"Redis is out of memory (maxmemory {human_bytes(server.maxmemory)}, "
            f"{human_bytes(server.used_memory)} used; batch {batch_id} needs about {human_bytes(need)}): "
            "nothing was enqueued",
            cause="oom",
        )
