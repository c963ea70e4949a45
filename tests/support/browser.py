"""Debian's Chromium driven by Playwright: the dashboard's browser tests and ``scripts/screenshots``.

Playwright's own browser download cannot run here (no internet); ``/usr/bin/chromium`` is Debian's
``chromium`` package (``.ci/run`` installs it). The flags keep Chromium from calling home: this
machine refuses those connections, and waiting for them slows every page.
"""

from __future__ import annotations

import os
from pathlib import Path

from playwright.async_api import BrowserContext, Playwright

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium_missing", "launch_chromium"]

CHROMIUM = Path(os.environ.get("CODITECT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_missing() -> str | None:
    """Why the browser cannot start, or None."""
    if not CHROMIUM.exists():
        return (
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does) "
            "or point CODITECT_CHROMIUM at a Chromium binary"
        )
    return None


async def launch_chromium(playwright: Playwright, profile: Path, *, width: int = 1280) -> BrowserContext:
    """A headless Chromium with a fresh profile in ``profile``."""
    return await playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS,
        headless=True,
        viewport={"width": width, "height": 900},
    )
