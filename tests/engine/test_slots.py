"""Worker slots: a job inside ``idle()`` gives its slot back, and takes one again first in line."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from arq.worker import func

from coditect.engine.context import JOB_RUN_KEY
from coditect.engine.slots import Slot, Slots
from coditect.engine.worker import CoditectWorker
from tests.engine.support import Probe, echo, result_of, true
from tests.support.fake_backend import FakeBackend, wait_until


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_taking_and_releasing_counts_free_slots_and_tells_only_when_the_first_one_frees() -> None:
    freed = Counter()
    slots = Slots(2, freed)

    first, second = slots.take(), slots.take()
    assert slots.free == 0
    first.release()
    first.release()  # once only

    assert (slots.free, slots.busy, freed.count) == (1, 1, 1)
    second.release()  # a slot was free already: the claim loop is not waiting for one
    assert (slots.free, freed.count) == (2, 1)
    third = slots.take()
    slots.take().release()
    assert freed.count == 2  # full again, then one freed
    third.release()
    assert (slots.free, freed.count) == (2, 2)


async def test_idle_gives_the_slot_back_and_takes_one_again() -> None:
    freed = Counter()
    slots = Slots(1, freed)
    slot = slots.take()

    async with slot.idle():
        assert (slots.free, freed.count, slot.held) == (1, 1, False)
        async with slot.idle():  # nested: the outer block already gave it back
            assert slots.free == 1

    assert (slots.free, slot.held) == (0, True)


async def _leave_idle_behind_a_new_claim(slots: Slots) -> tuple[asyncio.Task[None], Slot, Slot]:
    """A job that gives its slot back, sees a new claim take it, and then waits to take one back."""
    slot = slots.take()
    taken: list[Slot] = []

    async def body() -> None:
        async with slot.idle():
            taken.append(slots.take())

    task = asyncio.create_task(body())
    await wait_until(lambda: true(len(slots._returning) == 1), what="the job to wait for a slot")
    return task, slot, taken[0]


async def test_leaving_idle_goes_ahead_of_new_claims_and_gets_the_next_free_slot() -> None:
    slots = Slots(2, Counter())
    busy = slots.take()
    task, slot, _ = await _leave_idle_behind_a_new_claim(slots)
    assert slots.free == 0

    busy.release()  # passes straight to the returning job, not to a new claim

    async with asyncio.timeout(5):
        await task
    assert (slots.busy, slots.free, slot.held) == (2, 0, True)


async def test_a_job_cancelled_while_waiting_for_its_slot_leaves_the_line() -> None:
    slots = Slots(1, Counter())
    task, slot, other = await _leave_idle_behind_a_new_claim(slots)

    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert (slot.held, slots.busy, len(slots._returning)) == (False, 1, 0)
    other.release()
    assert (slots.busy, slots.free) == (0, 1)


async def test_a_slot_handed_over_just_as_the_job_is_cancelled_is_passed_on() -> None:
    slots = Slots(1, Counter())
    task, slot, other = await _leave_idle_behind_a_new_claim(slots)

    other.release()  # handed to the waiting job...
    task.cancel()  # ...which is cancelled before it runs again
    await asyncio.gather(task, return_exceptions=True)

    assert (slot.held, slots.busy, slots.free) == (False, 0, 1)


async def idle_until_released(ctx: dict[str, Any]) -> str:
    probe: Probe = ctx["probe"]
    probe.record(ctx)
    async with ctx[JOB_RUN_KEY].idle():
        await probe.release.wait()
    return "done waiting"


async def test_a_job_waiting_in_idle_lets_another_job_run_in_its_slot(
    pool: ArqRedis, probe: Probe, backend: FakeBackend
) -> None:
    worker = backend.worker(
        [func(idle_until_released, name="wait"), func(echo, name="echo")], ctx={"probe": probe}, max_jobs=1
    )
    await pool.enqueue_job("wait", _job_id="waiting")
    await probe.wait_started("waiting")
    await pool.enqueue_job("echo", "meanwhile", _job_id="other")

    assert (await result_of(pool, "other"))["value"] == "meanwhile"
    probe.release.set()
    assert await result_of(pool, "waiting") == "done waiting"
    await wait_until(lambda: true(not worker.tasks), what="both jobs to end")
    assert worker._slots.busy == 0


async def test_slots_count_only_jobs_that_are_working(
    pool: ArqRedis, probe: Probe, start_worker: Callable[..., CoditectWorker]
) -> None:
    worker = start_worker(max_jobs=3)
    await pool.enqueue_job("hold", _job_id="j1")
    await probe.wait_started("j1")

    assert (worker._slots.busy, worker._slots.free) == (1, 2)
    probe.release.set()
    await result_of(pool, "j1")
    await wait_until(lambda: true(worker._slots.busy == 0), what="the slot to be free")
