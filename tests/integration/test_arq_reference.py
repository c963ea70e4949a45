"""ARQ's own test suite against coditect's worker: ``scripts/arq-reference`` as CI runs it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.faults import run_command

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "arq-reference"


@pytest.mark.timeout(180)
async def test_arqs_own_tests_fail_only_where_coditect_differs_on_purpose(worker_env: dict[str, str]) -> None:
    # It downloads ARQ's sdist with pip, starts its own redis-server and runs ARQ's tests.
    code, out, err = await run_command(sys.executable, str(SCRIPT), env=worker_env, timeout_s=170)

    report = out.decode()
    assert code == 0, report[-4000:] + err.decode()[-2000:]
    assert "reference run (coditect)" in report
    assert "as expected:" in report
