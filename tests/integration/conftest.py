"""Integration fixtures: the suite's own redis-server, real worker processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from coditect.settings import Settings
from tests.support.workers import WorkerProcess


@pytest.fixture
def real_settings(redis_url: str) -> Settings:
    return Settings(_env_file=None, redis_url=redis_url, poll_interval_s=0.01)  # type: ignore[call-arg]


@pytest.fixture
def worker_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for worker processes; tests add CODITECT_* entries to it."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CODITECT_", "ANTHROPIC_", "OPENAI_"))}
    return {
        **keep,
        "CODITECT_REDIS_URL": redis_url,
        "CODITECT_POLL_INTERVAL_S": "0.01",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }


@pytest.fixture
async def start_workers(worker_env: dict[str, str]) -> AsyncIterator[Callable[..., Any]]:
    started: list[WorkerProcess] = []

    async def start(count: int = 1, **env: str) -> list[WorkerProcess]:
        workers = [WorkerProcess({**worker_env, **env}) for _ in range(count)]
        for worker in workers:
            started.append(worker)
        for worker in workers:
            await worker.start()
        return workers

    yield start
    for worker in started:
        await worker.stop()
