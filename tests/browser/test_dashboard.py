"""The dashboard at /ui/ in headless Chromium against a real server: signing
in with a pasted token, the sessions table page by page, a connection's
lifecycle, a session's tasks moving live, the kick, the node page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain.connection import Connection
from domain.lifecycle import state_values
from service.application.auth import TokenSigner
from tests.browser.conftest import WAIT_MS, Browser, expect
from tests.conftest import TEST_SECRET, Api
from tests.e2e.wsclient import call, closed_record, open_live

Serve = Callable[..., Any]
SIGNER = TokenSigner(TEST_SECRET)
LIFECYCLE = state_values(Connection.lifecycle)  # CONNECTING ... CLOSED


async def signed_in(browser: Browser, api: Api, user: str = "alice", *roles: str) -> Any:
    """A page of the dashboard, signed in with a token pasted into the form."""
    page = await browser.page()
    page.set_default_timeout(WAIT_MS)
    await page.goto(api.url("/ui/"))
    await page.fill("#token", SIGNER.mint(user, list(roles) or ["user"]))
    await page.click("button[type=submit]")
    await expect(page.locator("#sessions")).to_be_visible()
    return page


async def worker(api: Api, path: str, body: dict[str, Any]) -> int:
    status, answer = await call(
        api.http, "POST", api.url(path), user="w", roles=("service",), json=body
    )
    assert status in (200, 201, 202), answer
    return int(answer["position"])


async def test_the_dashboard_signs_in_pages_through_sessions_and_shows_a_connections_lifecycle(
    serve: Serve, sqlite_url: str, browser: Browser
) -> None:
    api: Api = await serve(sqlite_url)
    for n in range(27):
        status, body = await api.call("POST", "/v1/sessions", json={"session_id": f"s-{n:02}"})
        assert status == 201, body
    status, body = await api.call("POST", "/v1/sessions", user="bob", json={"session_id": "s-bob"})
    assert status == 201, body
    socket = await open_live(api, "s-26", connection_id="tab-1")
    await socket.close()
    await closed_record(api, "tab-1")

    page = await browser.page()
    page.set_default_timeout(WAIT_MS)
    answer = await page.goto(api.url("/ui/"))
    assert answer is not None and "default-src 'self'" in answer.headers["content-security-policy"]
    await expect(page).to_have_url(api.url("/ui/#/signin"))
    await page.fill("#token", "not a token")
    await page.click("button[type=submit]")
    await expect(page.get_by_role("alert")).to_contain_text("That is not a token")
    await page.fill(
        "#token", TokenSigner("another-key-0123456789-0123456789").mint("alice", ["user"])
    )
    await page.click("button[type=submit]")
    await expect(page.get_by_role("alert")).to_contain_text("Your token was refused")

    await page.fill("#token", SIGNER.mint("alice", ["user"]))
    await page.click("button[type=submit]")
    rows = page.locator("#sessions tbody tr")
    await expect(rows).to_have_count(25)
    await expect(rows.first).to_have_attribute("data-session-id", "s-26")  # newest first
    await expect(page.locator("#user")).to_contain_text("alice")
    await expect(page.locator("#node")).to_contain_text("test-node")
    await page.get_by_role("button", name="Load more").click()
    await expect(rows).to_have_count(27)
    await expect(rows.last).to_have_attribute("data-session-id", "s-00")
    await expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    await expect(page.locator("[data-session-id='s-bob']")).to_have_count(0)

    await page.goto(api.url("/ui/#/connections/tab-1"))
    steps = page.locator("#lifecycle li")
    await expect(steps).to_have_count(6)
    states = [await step.get_attribute("data-state") for step in await steps.all()]
    assert states == LIFECYCLE  # every step, in order
    await expect(steps.last).to_contain_text("1000 normal")
    await expect(page.locator("dl.facts")).to_contain_text("1000 normal")
    await expect(page.get_by_role("button", name="Kick…")).to_have_count(0)  # not live

    # A refresh shows the token's new expiry, and a client's close its own words.
    refreshed = await open_live(api, "s-25", connection_id="tab-2")
    await refreshed.send({"type": "auth", "token": api.signer.mint("alice")})
    token = await refreshed.until_type("token")
    await refreshed.ws.close(code=4000, message=b"tab closed")
    await closed_record(api, "tab-2")
    await page.goto(api.url("/ui/#/connections/tab-2"))
    await expect(page.locator("#lifecycle li")).to_have_count(7)
    until = await page.evaluate(f"new Date({token['exp']} * 1000).toLocaleTimeString()")
    await expect(page.locator("#lifecycle")).to_contain_text(f"token until {until}")
    await expect(page.locator("#lifecycle li").last).to_contain_text('said "tab closed"')
    # The header counts the token's time down while the page is open.
    chip = page.locator("#user .chip")
    first = await chip.inner_text()
    await expect(chip).not_to_have_text(first, timeout=3000)

    await page.goto(api.url("/ui/#/connections/no-such-tab"))
    await expect(page.get_by_role("alert")).to_contain_text("no connection 'no-such-tab'")


async def test_the_dashboard_shows_a_sessions_tasks_moving_and_its_connections(
    serve: Serve, sqlite_url: str, browser: Browser
) -> None:
    api: Api = await serve(sqlite_url)
    session = "s-tasks"
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": session})
    assert status == 201, body
    tasks = f"/v1/sessions/{session}/tasks"
    await worker(api, tasks, {"task_id": "t1", "name": "export", "total": 100})
    await worker(api, f"{tasks}/t1/progress", {"done": 10})

    page = await signed_in(browser, api)
    await page.goto(api.url(f"/ui/#/sessions/{session}"))
    bar = page.locator("[data-task-id='t1'] [role=progressbar]")
    await expect(bar).to_have_attribute("aria-valuenow", "10")
    await expect(page.locator(".stream-live")).to_be_visible()
    for done in (40, 75):
        position = await worker(api, f"{tasks}/t1/progress", {"done": done, "note": f"row {done}"})
        await expect(bar).to_have_attribute("aria-valuenow", str(done))
        await expect(page.locator(f"#timeline li[data-position='{position}']")).to_contain_text(
            f"t1 {done} / 100"
        )
    await worker(api, f"{tasks}/t1/complete", {})
    await expect(bar).to_have_attribute("aria-valuenow", "100")
    await expect(page.locator("[data-task-id='t1']")).to_contain_text("COMPLETED")

    socket = await open_live(api, session, connection_id="tab-9")
    row = page.locator("[data-connection-id='tab-9']")
    await expect(row).to_contain_text("PROCESSING_READY")
    await socket.close()
    await expect(row).to_contain_text("CLOSED")
    await expect(row).to_contain_text("1000 normal")

    status, body = await api.call("DELETE", f"/v1/sessions/{session}")
    assert status == 200, body
    await expect(page.locator(".page-head > .badge")).to_have_text("ENDED")
    await expect(page.locator(".stream-ended")).to_have_text("ended")


async def test_a_kick_from_the_dashboard_closes_the_socket(
    serve: Serve, sqlite_url: str, browser: Browser
) -> None:
    api: Api = await serve(sqlite_url)
    socket = await open_live(api, "s-kick", connection_id="tab-k")
    page = await signed_in(browser, api)
    await page.goto(api.url("/ui/#/connections/tab-k"))
    await expect(page.locator(".page-head > .badge")).to_have_text("PROCESSING_READY")
    await page.get_by_role("button", name="Kick…").click()
    await page.get_by_role("button", name="Kick", exact=True).click()

    assert await socket.until_closed() == 4403
    closed = await closed_record(api, "tab-k")
    assert closed["data"]["details"] == {"code": 4403, "reason": "kicked"}
    await expect(page.locator(".page-head > .badge")).to_have_text("CLOSED")
    await expect(page.locator("dl.facts")).to_contain_text("4403 kicked")


async def test_the_node_page_shows_live_connections_by_state_to_an_auditor_only(
    serve: Serve, sqlite_url: str, browser: Browser
) -> None:
    api: Api = await serve(sqlite_url)
    socket = await open_live(api, "s-node", connection_id="tab-n")
    page = await signed_in(browser, api, "auditor-1", "auditor")
    await page.get_by_role("link", name="Node", exact=True).click()
    await expect(page.locator(".stats")).to_contain_text("test-node")
    live = page.locator("#connections-by-state tr[data-state='PROCESSING_READY'] td")
    await expect(live).to_have_text("1")
    await expect(page.locator("#projections tbody tr")).not_to_have_count(0)
    await socket.close()
    await expect(live).to_have_text("0")

    user = await signed_in(browser, api)
    await user.goto(api.url("/ui/#/node"))
    await expect(user.get_by_role("alert")).to_contain_text("needs a service or auditor token")
