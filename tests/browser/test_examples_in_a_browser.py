"""The examples in headless Chromium against real servers: the chat page (a
second tab supersedes the first, 4409, and a reload loses nothing) and the
coverage dashboard (the job starts before the page connects, and every report
still arrives once and in order)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from service.application.auth import TokenSigner
from tests.browser.conftest import EXAMPLES, WAIT_MS, Browser, expect
from tests.conftest import TEST_SECRET, Api, ServerProcess, free_port, wait_for_port
from tests.e2e.wsclient import all_events, call, closed_record

Serve = Callable[..., Any]
SIGNER = TokenSigner(TEST_SECRET)
SHOWN = ("MessageRecorded", "ConnectionAttached", "ConnectionDetached")  # what the chat lists


async def join_chat(browser: Browser, page_origin: str, api: Api, session: str) -> Any:
    page = await browser.page()
    await page.goto(f"{page_origin}/examples/chat/index.html")
    await page.fill("input[name=url]", api.base_url)
    await page.fill("input[name=session]", session)
    await page.fill("input[name=token]", SIGNER.mint("alice", ["user"]))
    await page.click("#join button")
    await until_connected(page)
    return page


async def until_connected(page: Any) -> None:
    await page.wait_for_function("() => window.chat?.state === 'connected'", timeout=WAIT_MS)


async def say(page: Any, text: str) -> None:
    await page.fill("#say input", text)
    await page.press("#say input", "Enter")
    await expect(page.locator("#messages li", has_text=text)).to_have_count(1)


async def test_a_second_chat_tab_supersedes_the_first_and_a_reload_loses_nothing(
    serve: Serve, sqlite_url: str, browser: Browser, page_origin: str
) -> None:
    api: Api = await serve(sqlite_url, cors_origins=(page_origin,))
    first = await join_chat(browser, page_origin, api, "chat-1")
    await say(first, "hello from the first tab")
    first_connection = await first.evaluate("() => window.chat.connectionId")

    second = await join_chat(browser, page_origin, api, "chat-1")
    await expect(first.locator("#closed")).to_have_attribute("data-reason", "superseded")
    await expect(first.locator("#closed")).to_contain_text("opened again in another tab")
    closed = await closed_record(api, first_connection)
    assert closed["data"]["details"] == {"code": 4409, "reason": "superseded"}
    await expect(second.locator("#messages li", has_text="hello from the first tab")).to_have_count(
        1
    )
    await say(second, "hello from the second tab")

    await second.reload()
    await until_connected(second)
    status, body = await call(
        api.http,
        "POST",
        api.url("/v1/sessions/chat-1/messages"),
        json={"role": "assistant", "content": "after the reload"},
    )
    assert status == 201, body
    await expect(second.locator("#messages li", has_text="after the reload")).to_have_count(1)
    history = await all_events(api.http, api.base_url, "chat-1")
    shown = await second.eval_on_selector_all(
        "#messages li", "items => items.map(i => Number(i.dataset.position))"
    )
    assert shown == [e["position"] for e in history if e["type"] in SHOWN]
    said = [e["data"]["content"] for e in history if e["type"] == "MessageRecorded"]
    assert said == ["hello from the first tab", "hello from the second tab", "after the reload"]


def start_coverage_example(
    port: int, sessiond: str, store: str, log_path: Path
) -> subprocess.Popen[bytes]:
    """examples/coverage/server.py, minting tokens with the test servers' key."""
    command = [sys.executable, str(EXAMPLES / "coverage" / "server.py"), "--port", str(port)]
    command += ["--sessiond", sessiond, "--delay", "0.01"]
    env = {**os.environ, "SESSIOND_SECRET": TEST_SECRET, "SESSIOND_STORE": store}
    with log_path.open("wb") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, proc, log_path)
    return proc


async def test_the_coverage_example_gets_the_progress_of_a_job_started_before_it_connected(
    browser: Browser, tmp_path: Path
) -> None:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    store = f"sqlite:///{tmp_path / 'sessiond.db'}"
    sessiond = ServerProcess(store, SESSIOND_CORS_ORIGINS=origin)
    await asyncio.to_thread(sessiond.start, tmp_path / "sessiond.log")
    log = tmp_path / "example.log"
    example = await asyncio.to_thread(start_coverage_example, port, sessiond.base_url, store, log)
    try:
        page = await browser.page()
        await page.goto(origin)
        await page.check("input[name=jobFirst]")
        await page.click("#start button")
        await page.wait_for_function(
            "() => ['TaskCompleted', 'ConnectionAttached']"
            ".every(t => window.coverage.events.some(e => e.type === t))",
            timeout=WAIT_MS,
        )
        await expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "24")
        await expect(page.locator("#note")).to_contain_text("every report arrived")
        session = await page.evaluate("() => window.coverage.sessionId")
        seen = await page.evaluate("() => window.coverage.events")
        async with aiohttp.ClientSession() as http:
            history = await all_events(http, sessiond.base_url, session, user="coverage-user")
        assert seen == history
        types = [e["type"] for e in history]
        assert types.index("TaskStarted") < types.index("ConnectionAttached")  # job first
        assert types.count("TaskProgressed") == 24
    finally:
        example.terminate()
        example.wait(10)
        sessiond.stop()
