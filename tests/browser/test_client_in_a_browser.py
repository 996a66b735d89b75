"""The browser client (GET /v1/client.js) in headless Chromium, imported by a
page on another origin: every event once and in order whenever it was
recorded, across a server restart, and on a socket that outlives its first
token."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from domain.connection import Connection
from domain.lifecycle import state_values
from service.application.auth import TokenSigner
from tests.browser.conftest import WAIT_MS, Browser
from tests.conftest import TEST_SECRET, Api, ServerProcess
from tests.e2e.wsclient import AUDITOR, all_events, call, connection_states

Serve = Callable[..., Any]
SIGNER = TokenSigner(TEST_SECRET)
LIVE = state_values(Connection.lifecycle)[:-1]  # CONNECTING ... PROCESSING_READY


async def worker(http: aiohttp.ClientSession, base: str, path: str, body: dict[str, Any]) -> int:
    """A worker's report (a ``service`` token): its position."""
    status, answer = await call(
        http, "POST", base + path, user="worker", roles=("service",), json=body
    )
    assert status in (200, 201, 202), answer
    return int(answer["position"])


async def progress(http: aiohttp.ClientSession, base: str, session: str, done: range) -> None:
    for n in done:
        await worker(
            http, base, f"/v1/sessions/{session}/tasks/t1/progress", {"done": n, "total": 30}
        )


async def open_follower(
    browser: Browser, page_origin: str, base: str, session: str, prefix: str, *, ttl: int = 3600
) -> Any:
    """The test page, following ``session`` on ``base`` with alice's tokens."""
    page = await browser.page()
    await page.expose_function(
        "sessiondToken", lambda reason: SIGNER.mint("alice", ["user"], ttl=ttl)
    )
    await page.goto(f"{page_origin}/pages/follow.html")
    await page.evaluate("o => follow(o)", {"url": base, "sessionId": session, "prefix": prefix})
    return page


async def until_live(page: Any, connection_id: str) -> None:
    await page.wait_for_function(
        "id => window.client.state === 'connected' && window.client.connectionId === id",
        arg=connection_id,
        timeout=WAIT_MS,
    )


async def seen_up_to(page: Any, position: int) -> list[dict[str, Any]]:
    """What the page was given once it has ``position``."""
    await page.wait_for_function(
        "p => window.seen.events.length && window.seen.events.at(-1).position >= p",
        arg=position,
        timeout=WAIT_MS,
    )
    events: list[dict[str, Any]] = await page.evaluate("() => window.seen.events")
    return events


async def test_a_page_on_another_origin_gets_progress_from_before_during_and_after_its_connect(
    serve: Serve, sqlite_url: str, browser: Browser, page_origin: str
) -> None:
    api: Api = await serve(sqlite_url, cors_origins=(page_origin,))
    base, http, session = api.base_url, api.http, "s-browser-progress"
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": session})
    assert status == 201, body
    await worker(http, base, f"/v1/sessions/{session}/tasks", {"task_id": "t1", "name": "export"})
    await progress(http, base, session, range(1, 6))  # before the page exists

    page = await open_follower(browser, page_origin, base, session, "tab")
    await progress(http, base, session, range(6, 16))  # while it connects
    await until_live(page, "tab.1")
    await progress(http, base, session, range(16, 31))  # once it is live
    last = await worker(http, base, f"/v1/sessions/{session}/tasks/t1/complete", {})

    seen = await seen_up_to(page, last)
    assert seen == await all_events(http, base, session)
    lifecycle = [s["lifecycle"] for s in await page.evaluate("() => window.seen.states")]
    walked = [s for i, s in enumerate(lifecycle) if s and (i == 0 or s != lifecycle[i - 1])]
    assert walked == LIVE[1:]  # the frames the page was sent: from ACCEPTED on
    assert await connection_states(api, "tab.1") == LIVE


async def test_a_page_resumes_across_a_server_restart_with_nothing_lost_or_repeated(
    browser: Browser, page_origin: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'sessiond.db'}"
    env = {"SESSIOND_CORS_ORIGINS": page_origin}
    first = ServerProcess(store, **env)
    await asyncio.to_thread(first.start, tmp_path / "server-1.log")
    second = ServerProcess(store, port=first.port, **env)
    base, session = first.base_url, "s-browser-restart"
    try:
        async with aiohttp.ClientSession() as http:
            status, body = await call(
                http, "POST", f"{base}/v1/sessions", json={"session_id": session}
            )
            assert status == 201, body
            await worker(
                http, base, f"/v1/sessions/{session}/tasks", {"task_id": "t1", "name": "export"}
            )
            await progress(http, base, session, range(1, 11))
            page = await open_follower(browser, page_origin, base, session, "tab")
            await until_live(page, "tab.1")
            await seen_up_to(page, 11)

            first.kill()
            await page.wait_for_function(
                "() => window.client.state === 'connecting'", timeout=WAIT_MS
            )
            await asyncio.to_thread(second.start, tmp_path / "server-2.log")
            await progress(http, base, session, range(11, 21))  # maybe before the page is back
            await page.wait_for_function(
                "() => window.client.state === 'connected'", timeout=WAIT_MS
            )
            await progress(http, base, session, range(21, 31))
            last = await worker(http, base, f"/v1/sessions/{session}/tasks/t1/complete", {})

            seen = await seen_up_to(page, last)
            assert seen == await all_events(http, base, session)
            assert await page.evaluate("() => window.client.recovered") is True
            assert await page.evaluate("() => window.client.connectionId") != "tab.1"
    finally:
        second.stop()
        first.stop()


async def test_a_live_page_refreshes_its_token_and_stays_live_past_the_first_tokens_exp(
    serve: Serve, sqlite_url: str, browser: Browser, page_origin: str
) -> None:
    api: Api = await serve(sqlite_url, cors_origins=(page_origin,))
    session = "s-browser-token"
    page = await browser.page()
    tokens: list[tuple[str, int]] = []

    def mint(reason: str) -> str:
        ttl = 4 if not tokens else 3600  # the first is short-lived
        token = SIGNER.mint("alice", ["user"], ttl=ttl)
        tokens.append((reason, SIGNER.verify(token).exp))
        return token

    await page.expose_function("sessiondToken", mint)
    await page.goto(f"{page_origin}/pages/follow.html")
    await page.evaluate(
        "o => follow(o)", {"url": api.base_url, "sessionId": session, "prefix": "tab"}
    )
    await until_live(page, "tab.1")
    first_exp = tokens[0][1]

    # The server warns ahead of exp; the page's getToken is asked, and the
    # socket carries on with the new token past the first one's exp.
    await page.wait_for_function(
        "exp => window.client.tokenExpiresAt > exp", arg=first_exp, timeout=WAIT_MS
    )
    await page.wait_for_function(
        "exp => Date.now() / 1000 > exp + 1", arg=first_exp, timeout=WAIT_MS
    )
    recorded = await page.evaluate("() => window.client.send('after the first exp')")
    assert recorded["data"]["content"] == "after the first exp"
    assert await page.evaluate("() => [window.client.state, window.client.connectionId]") == [
        "connected",
        "tab.1",
    ]
    assert [reason for reason, _ in tokens] == ["connect", "refresh"]
    assert await connection_states(api, "tab.1", **AUDITOR) == [*LIVE, "TokenRefreshed"]
