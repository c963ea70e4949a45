from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from coditect.gc_tuning import (
    FROZEN_BATCH_MIN_TASKS,
    WORKER_FULL_COLLECTION_EVERY,
    freeze_after_startup,
    frozen_while_running,
    settle,
)


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_a_worker_freezes_what_start_up_made() -> None:
    freeze_after_startup()

    assert gc.get_freeze_count() > 0


def test_a_worker_collects_in_full_less_often_and_the_young_generations_as_before() -> None:
    young, middle, _ = gc.get_threshold()

    freeze_after_startup()

    assert gc.get_threshold() == (young, middle, WORKER_FULL_COLLECTION_EVERY)


def test_a_small_batch_freezes_nothing() -> None:
    with frozen_while_running(FROZEN_BATCH_MIN_TASKS - 1):
        assert gc.get_freeze_count() == 0


def test_a_large_batch_freezes_until_the_last_one_of_the_process_ends() -> None:
    with frozen_while_running(FROZEN_BATCH_MIN_TASKS):
        assert gc.get_freeze_count() > 0
        with frozen_while_running(FROZEN_BATCH_MIN_TASKS):
            pass
        assert gc.get_freeze_count() > 0  # the outer batch still runs

    assert gc.get_freeze_count() == 0


def test_a_batch_that_fails_thaws_all_the_same() -> None:
    with pytest.raises(RuntimeError), frozen_while_running(FROZEN_BATCH_MIN_TASKS):
        raise RuntimeError("refused")

    assert gc.get_freeze_count() == 0


def test_settling_freezes_what_came_since_only_while_a_batch_holds_the_freeze() -> None:
    settle()
    assert gc.get_freeze_count() == 0

    with frozen_while_running(FROZEN_BATCH_MIN_TASKS):
        before = gc.get_freeze_count()
        kept = [[i] for i in range(100)]  # lists are tracked by the collector
        settle()
        assert gc.get_freeze_count() >= before + len(kept)

    assert gc.get_freeze_count() == 0


def test_a_process_that_froze_its_own_objects_keeps_them_frozen() -> None:
    gc.freeze()  # as an app server does after its imports
    own = gc.get_freeze_count()

    with frozen_while_running(FROZEN_BATCH_MIN_TASKS):
        settle()
        assert gc.get_freeze_count() == own

    assert gc.get_freeze_count() == own
