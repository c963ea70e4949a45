"""Engine fixtures: a probe that job functions report to, and in-process CoditectWorkers on fakeredis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from coditect.engine.worker import CoditectWorker
from tests.engine.support import FUNCTIONS, Probe
from tests.support.fake_backend import FakeBackend


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def start_worker(backend: FakeBackend, probe: Probe) -> Callable[..., CoditectWorker]:
    """Start a CoditectWorker running ``FUNCTIONS`` with ``ctx["probe"]``; closed after the test."""

    def start(**options: Any) -> CoditectWorker:
        return backend.worker(FUNCTIONS, ctx={"probe": probe}, **options)

    return start
