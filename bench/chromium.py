"""Headless Chromium for the browser tests and ``python -m bench.screenshot``.

The machine's own Chromium (Debian's ``chromium`` package, at
/usr/bin/chromium, or $SESSIOND_CHROMIUM), driven by Playwright: Playwright
cannot download a browser of its own here. Each launch gets a fresh profile
folder, and the flags that keep Chromium from calling home (updates, sync,
field trials, QUIC probes) on a network that is closed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM_ENV = "SESSIOND_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 860}


class ChromiumMissing(RuntimeError):
    """No Chromium, or no Playwright, to drive it with."""


def chromium_path() -> Path:
    """The Chromium to launch, or ChromiumMissing saying how to install it."""
    named = os.environ.get(CHROMIUM_ENV)
    candidates = [named] if named else [DEFAULT_CHROMIUM, shutil.which("chromium") or ""]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ChromiumMissing(
        f"no Chromium at {candidates[0]}: apt-get install -y chromium "
        f"(or name another in ${CHROMIUM_ENV})"
    )


def playwright() -> Any:
    """``async_playwright()``, or ChromiumMissing when Playwright is not installed."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        raise ChromiumMissing(
            "Playwright for Python is not installed: pip install -e '.[test]'"
        ) from None
    return async_playwright()


async def launch(driver: Any, profile: Path, executable: Path) -> Any:
    """A browser context on a fresh profile in ``profile``, a folder that does
    not exist yet or is empty (Playwright's persistent context: the folder is
    this launch's own)."""
    return await driver.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(executable),
        args=ARGS,
        headless=True,
        viewport=VIEWPORT,
    )
