"""Fixtures of the browser tests: headless Chromium, a screenshot of every
page at the end of each test (its path printed when the test fails), and a
second web server, on another origin, serving the test pages and examples/.

Chromium is the machine's (bench/chromium.py). Without it, or without
Playwright, these tests fail when the environment variable CI is set (.ci/run
sets it: CI must run them) and are skipped, saying why, anywhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.chromium import ChromiumMissing, chromium_path, launch, playwright
from tests.conftest import unavailable
from tests.e2e.wsclient import GUARD

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture skips, or fails under CI, saying so
    expect = None

# Playwright's waits (expect, wait_for_*) fail past this, rather than hang.
WAIT_MS = GUARD * 1000
if expect is not None:
    expect.set_options(timeout=WAIT_MS)

ROOT = Path(__file__).resolve().parents[2]
PAGES = Path(__file__).resolve().parent / "pages"
EXAMPLES = ROOT / "examples"
SCREENSHOTS = pytest.StashKey[list[Path]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed browser test names the screenshots of its pages (taken as it ends)."""
    report = yield
    shots = item.stash.get(SCREENSHOTS, [])
    if report.failed and shots:
        report.sections.append(("browser screenshots", "\n".join(str(p) for p in shots)))
    return report


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def chromium_or_stop() -> Path:
    try:
        executable = chromium_path()
        if expect is None:
            raise ChromiumMissing(
                "Playwright for Python is not installed: pip install -e '.[test]'"
            )
    except ChromiumMissing as e:
        unavailable(f"browser tests: {e}", ".ci/run installs Chromium")
    return executable


class Browser:
    """One Chromium on a fresh profile; its pages, and what went wrong in them."""

    def __init__(self, context: Any, shots: list[Path], folder: Path) -> None:
        self.context = context
        self.shots = shots
        self.folder = folder
        self.pages: list[Any] = []
        self.problems: list[str] = []

    async def page(self) -> Any:
        unused = [p for p in self.context.pages if p not in self.pages]
        page = unused[0] if unused else await self.context.new_page()
        self.pages.append(page)
        self.shots.append(self.folder / f"page-{len(self.pages)}.png")
        page.on("pageerror", lambda error: self.problems.append(f"{page.url}: {error}"))
        page.on("console", lambda message: self._console(page, message))
        return page

    def _console(self, page: Any, message: Any) -> None:
        # A page that breaks its Content-Security-Policy is a bug; a failed
        # request (a 401, a server that is down) is logged too, and is not.
        if message.type == "error" and "Content Security Policy" in message.text:
            self.problems.append(f"{page.url}: {message.text}")

    async def finish(self) -> None:
        for page, path in zip(self.pages, self.shots, strict=True):
            if not page.is_closed():
                await page.screenshot(path=str(path), full_page=True)


@pytest.fixture
async def browser(
    request: pytest.FixtureRequest, tmp_path: Path, screenshot_dir: Path
) -> AsyncIterator[Browser]:
    executable = chromium_or_stop()
    shots: list[Path] = []
    request.node.stash[SCREENSHOTS] = shots
    folder = screenshot_dir / request.node.name.replace("/", "_")[:120]
    folder.mkdir(parents=True, exist_ok=True)
    async with playwright() as driver:
        context = await launch(driver, tmp_path / "chromium-profile", executable)
        chromium = Browser(context, shots, folder)
        try:
            yield chromium
        finally:
            try:
                await chromium.finish()
            finally:
                await context.close()
    assert not chromium.problems, chromium.problems


@pytest.fixture
async def page_origin() -> AsyncIterator[str]:
    """http://127.0.0.1:PORT, another origin than sessiond's, serving
    tests/browser/pages/ under /pages/ and examples/ under /examples/."""
    app = web.Application()
    app.router.add_static("/pages/", PAGES)
    app.router.add_static("/examples/", EXAMPLES)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/")).rstrip("/")
    finally:
        await server.close()
