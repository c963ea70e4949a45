"""The cyclic garbage collector and coditect's long-lived objects.

CPython's full collection walks every tracked object. A worker holds tens of megabytes of them from
its imports and start-up, and an orchestrator that runs a batch of 100,000 tasks holds the caller's
tasks and the results as they come: each full collection walks all of it again, so the collector's
share grows with what the process holds, not with what it does. ``gc.freeze()`` moves the objects
alive at that moment out of the collector's sight (reference counting still frees them as usual).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = [
    "FROZEN_BATCH_MIN_TASKS",
    "SETTLE_EVERY",
    "WORKER_FULL_COLLECTION_EVERY",
    "freeze_after_startup",
    "frozen_while_running",
    "settle",
]

# A batch smaller than this has too few objects for full collections to matter.
FROZEN_BATCH_MIN_TASKS = 1_000
# Results a waiter holds between two calls of settle().
SETTLE_EVERY = 5_000
# A worker's third threshold: a full collection after this many collections of the middle
# generation (CPython's default is 10).
WORKER_FULL_COLLECTION_EVERY = 100

_holders = 0
_ours = False  # whether the freeze held for batches is coditect's to undo


def freeze_after_startup() -> None:
    """A worker process, once started: what start-up made stays, so no full collection walks it.

    Full collections also come ten times less often. CPython holds one back until the objects that
    reached the oldest generation since the last one are a quarter of those it kept then; frozen
    objects no longer count there, so with thousands of jobs in flight (each a few dozen objects that
    live as long as the job) every tenth middle collection walked all of them again: ~30 % of a
    worker's CPU in a batch of 10,000 one-second tasks. Young garbage is collected as before."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, WORKER_FULL_COLLECTION_EVERY)


@contextlib.contextmanager
def frozen_while_running(tasks: int) -> Iterator[None]:
    """While a batch of ``tasks`` is submitted and awaited, the objects alive at its start (the
    caller's tasks among them) are frozen; they go back to the collector when the last such batch
    of the process ends, so garbage cycles among them are still collected then. A process that froze
    objects itself (an app server after its imports, a worker after start-up) is left as it is:
    ``gc.unfreeze()`` would thaw its objects too."""
    global _holders, _ours
    if tasks < FROZEN_BATCH_MIN_TASKS:
        yield
        return
    if _holders == 0:
        _ours = gc.get_freeze_count() == 0
        if _ours:
            gc.freeze()
    _holders += 1
    try:
        yield
    finally:
        _holders -= 1
        if _holders == 0 and _ours:
            gc.unfreeze()


def settle() -> None:
    """While a batch holds the freeze: freeze what was made since (the results it keeps until it
    returns), so that full collections do not walk a growing pile of results either."""
    if _holders and _ours:
        gc.freeze()
