"""The browser client against a real server: GET /v1/client.js serves the npm
package's module with its validators and CORS, and the module itself, run by
Node against a real socket, walks the lifecycle, delivers each position once
across a server-side close, gets a message recorded once, and stops when a
newer connection supersedes it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from service.edge.context import SOCKETS
from tests.conftest import Api
from tests.e2e.wsclient import GUARD, open_socket
from tests.nodejs import JS_MODULE, ROOT, node_command

Serve = Callable[..., Any]
PAGE = "http://localhost:3000"
FOLLOW = ROOT / "tests" / "e2e" / "js" / "follow.mjs"


# --- GET /v1/client.js ------------------------------------------------------------------


async def test_the_client_module_is_served_with_a_strong_etag_and_no_cache(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    async with api.http.get(api.url("/v1/client.js")) as r:
        assert r.status == 200
        assert await r.read() == JS_MODULE.read_bytes()
        assert r.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert r.headers["Cache-Control"] == "no-cache"
        etag = r.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2, etag
    async with api.http.head(api.url("/v1/client.js")) as r:
        assert r.status == 200
        assert r.headers["ETag"] == etag


@pytest.mark.parametrize("validator", ["{etag}", "W/{etag}", '"other", {etag}', "*"])
async def test_a_copy_the_browser_has_is_answered_304(
    serve: Serve, sqlite_url: str, validator: str
) -> None:
    api = await serve(sqlite_url)
    async with api.http.get(api.url("/v1/client.js")) as r:
        etag = r.headers["ETag"]
    headers = {"If-None-Match": validator.format(etag=etag)}
    async with api.http.get(api.url("/v1/client.js"), headers=headers) as r:
        assert r.status == 304
        assert await r.read() == b""
        assert r.headers["ETag"] == etag
        assert r.headers["Cache-Control"] == "no-cache"
    async with api.http.get(api.url("/v1/client.js"), headers={"If-None-Match": '"old"'}) as r:
        assert r.status == 200
        assert await r.read() == JS_MODULE.read_bytes()


async def test_a_page_on_an_allowed_origin_may_import_the_module_and_another_may_not(
    serve: Serve, sqlite_url: str
) -> None:
    """A cross-origin module script is fetched in CORS mode: it runs only when
    the answer (the 304 too) names the page's origin."""
    api = await serve(sqlite_url, cors_origins=(PAGE,))
    async with api.http.get(api.url("/v1/client.js"), headers={"Origin": PAGE}) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == PAGE
        assert r.headers["Vary"] == "Origin"
        etag = r.headers["ETag"]
    revalidate = {"Origin": PAGE, "If-None-Match": etag}
    async with api.http.get(api.url("/v1/client.js"), headers=revalidate) as r:
        assert r.status == 304
        assert r.headers["Access-Control-Allow-Origin"] == PAGE
    async with api.http.get(
        api.url("/v1/client.js"), headers={"Origin": "http://evil.example"}
    ) as r:
        assert r.status == 200
        assert "Access-Control-Allow-Origin" not in r.headers


# --- the module, run by Node against a real server ----------------------------------------


class NodeClient:
    """tests/e2e/js/follow.mjs in a child process: what the client told the page, line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    @property
    def events(self) -> list[dict[str, Any]]:
        return [line["event"] for line in self.lines if line["kind"] == "event"]

    def command(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(command) + b"\n")

    async def until(self, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        for line in self.lines:
            if done(line):
                return line
        assert self.proc.stdout is not None
        async with asyncio.timeout(GUARD):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    stderr = await self.proc.stderr.read() if self.proc.stderr else b""
                    raise AssertionError(f"node ended before {what}: {self.lines} {stderr!r}")
                line = orjson.loads(raw)
                self.lines.append(line)
                if done(line):
                    return line

    async def until_live(self, connection_id: str) -> dict[str, Any]:
        return await self.until(
            lambda line: (
                line["kind"] == "state"
                and line["state"] == "connected"
                and line["connectionId"] == connection_id
            ),
            f"{connection_id} live",
        )


@pytest.fixture
async def node_client() -> AsyncIterator[Callable[..., Any]]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(api: Api, session_id: str, prefix: str) -> NodeClient:
        token = api.signer.mint("alice", ["user"])
        proc = await asyncio.create_subprocess_exec(
            *node_command(),
            str(FOLLOW),
            api.base_url,
            session_id,
            token,
            prefix,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        return NodeClient(proc)

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()


async def post(api: Api, path: str, body: dict[str, Any]) -> None:
    status, answer = await api.call("POST", path, json=body, user="worker", roles=("service",))
    assert status in (200, 201, 202), answer


async def test_the_module_in_node_resumes_a_real_session_once_in_order_and_stops_when_superseded(
    serve: Serve, sqlite_url: str, node_client: Callable[..., Any]
) -> None:
    api = await serve(sqlite_url)
    session = "s-js-e2e"
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": session})
    assert status == 201, body
    await post(api, f"/v1/sessions/{session}/tasks", {"task_id": "t1", "name": "export"})
    await post(api, f"/v1/sessions/{session}/tasks/t1/progress", {"done": 1})

    page = await node_client(api, session, "page-1")
    await page.until_live("page-1.1")
    lifecycle = [line["lifecycle"] for line in page.lines if line["kind"] == "state"]
    assert lifecycle == [None, "ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"]

    page.command(send="hello", messageId="m-1")
    await page.until(lambda line: line["kind"] == "recorded", "the message recorded")

    # The server ends the socket; the client resumes, and misses nothing recorded meanwhile.
    await api.server.app[SOCKETS].sockets["page-1.1"].end(1012, "service_restart")  # type: ignore[attr-defined]
    await post(api, f"/v1/sessions/{session}/tasks/t1/progress", {"done": 2})
    live = await page.until_live("page-1.2")
    assert live["recovered"] is True
    await post(api, f"/v1/sessions/{session}/tasks/t1/complete", {})

    status, history = await api.call("GET", f"/v1/sessions/{session}/events?limit=1000")
    assert status == 200, history
    last = history["events"][-1]["position"]
    await page.until(
        lambda line: line["kind"] == "event" and line["event"]["position"] == last, "the end"
    )
    assert page.events == history["events"]
    messages = [e for e in history["events"] if e["type"] == "MessageRecorded"]
    assert [m["data"]["message_id"] for m in messages] == ["m-1"]

    # Another tab on the same session: this one stops, saying why, and reconnects no more.
    other = await open_socket(api.http, api.base_url, session, connection_id="tab-2")
    try:
        closed = await page.until(lambda line: line["kind"] == "closed", "closed")
        assert closed == {"kind": "closed", "code": 4409, "reason": "superseded"}
        assert await asyncio.wait_for(page.proc.wait(), GUARD) == 0
    finally:
        await other.ws.close()
    for connection_id, code, reason in [
        ("page-1.1", 1012, "service_restart"),
        ("page-1.2", 4409, "superseded"),
    ]:
        status, record = await api.call(
            "GET", f"/v1/connections/{connection_id}/events", user="auditor-1", roles=("auditor",)
        )
        assert status == 200, record
        assert record["events"][-1]["data"]["details"] == {"code": code, "reason": reason}
