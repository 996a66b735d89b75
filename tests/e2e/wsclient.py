"""The WebSocket client of the end-to-end tests (real sockets, real frames),
and the helpers around it: sockets walked to PROCESSING_READY, producers and
readers over HTTP, and polling.

Every wait has a guard timeout so a broken server fails a test instead of
hanging it; nothing here asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from service.application.auth import TokenSigner
from tests.conftest import TEST_SECRET, Api

GUARD = 20.0  # seconds: fail instead of hang
CLOSED_TYPES = (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)

# Connection records are read as an auditor: it may read every connection,
# whoever opened it and however it ended.
AUDITOR: dict[str, Any] = {"user": "auditor-1", "roles": ("auditor",)}

# Tokens for servers known only by their base URL (server processes): the
# secret is the one the ``serve`` fixture's servers use too.
SIGNER = TokenSigner(TEST_SECRET)


def bearer(user: str = "alice", *roles: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + SIGNER.mint(user, list(roles) or ["user"])}


class SocketClosed(AssertionError):
    """The socket closed while the test still expected a frame."""

    def __init__(self, code: int | None, frames: list[dict[str, Any]]) -> None:
        super().__init__(f"socket closed with {code}; frames so far: {frames}")
        self.code = code


@dataclass
class WsClient:
    """One socket and every JSON frame it has received so far, events kept apart."""

    ws: aiohttp.ClientWebSocketResponse
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def connection_id(self) -> str:
        welcome = self.first("welcome")
        assert welcome is not None, f"no welcome frame yet: {self.frames}"
        return str(welcome["connection_id"])

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    def first(self, kind: str, **match: Any) -> dict[str, Any] | None:
        for frame in self.frames:
            if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
                return frame
        return None

    @property
    def states(self) -> list[str]:
        return [f["state"] for f in self.frames if f.get("type") in ("welcome", "state")]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [f["event"] for f in self.frames if f.get("type") == "event"]

    @property
    def positions(self) -> list[int]:
        return [e["position"] for e in self.events]

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def receive(self, within: float = GUARD) -> dict[str, Any]:
        """The next JSON frame; SocketClosed when the socket closes instead."""
        while True:
            msg = await self.ws.receive(timeout=within)
            if msg.type == aiohttp.WSMsgType.TEXT:
                break
            if msg.type == aiohttp.WSMsgType.CLOSE:
                raise SocketClosed(int(msg.data), self.frames)
            if msg.type in CLOSED_TYPES:
                raise SocketClosed(self.ws.close_code, self.frames)
            # PING/PONG with autoping=False: not frames of the protocol
        frame: dict[str, Any] = orjson.loads(msg.data)
        self.frames.append(frame)
        return frame

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], within: float = GUARD
    ) -> dict[str, Any]:
        """Receive frames until one satisfies ``predicate``; return it."""
        async with asyncio.timeout(within):
            while True:
                frame = await self.receive(within=within)
                if predicate(frame):
                    return frame

    async def until_state(self, state: str, within: float = GUARD) -> dict[str, Any]:
        return await self.until(
            lambda f: f.get("type") in ("welcome", "state") and f.get("state") == state, within
        )

    async def until_type(self, kind: str, within: float = GUARD) -> dict[str, Any]:
        return await self.until(lambda f: f.get("type") == kind, within)

    async def until_event(self, position: int, within: float = GUARD) -> dict[str, Any]:
        frame = await self.until(
            lambda f: f.get("type") == "event" and f["event"]["position"] >= position, within
        )
        return dict(frame["event"])

    async def until_position(self, position: int) -> None:
        """Return at once if an event at ``position`` or later is already in."""
        if self.positions and self.positions[-1] >= position:
            return
        await self.until(lambda f: f.get("type") == "event" and f["event"]["position"] >= position)

    async def until_closed(self, within: float = GUARD) -> int | None:
        """Read (and keep) frames until the socket closes.

        The code the server's close frame carried; without one (the
        connection just ended), what aiohttp recorded, e.g. 1006."""
        async with asyncio.timeout(within):
            while True:
                try:
                    await self.receive(within=within)
                except SocketClosed as closed:
                    return closed.code

    async def close(self, code: int = 1000) -> None:
        await self.ws.close(code=code)

    def drop(self) -> None:
        """Vanish without a close handshake, as a crashed client or cut cable."""
        conn = self.ws._conn  # the socket's TCP connection
        assert conn is not None and conn.transport is not None
        conn.transport.abort()


async def connect(
    api: Api,
    session_id: str,
    *,
    connection_id: str | None = None,
    after: int | None = None,
    headers: dict[str, str] | None = None,
    **ws_kwargs: Any,
) -> WsClient:
    """Open a socket on the session (the upgrade only; nothing sent yet)."""
    params: dict[str, Any] = {}
    if connection_id is not None:
        params["connection_id"] = connection_id
    if after is not None:
        params["after"] = after
    ws = await api.http.ws_connect(
        api.ws_url(session_id, **params), headers=headers or {}, **ws_kwargs
    )
    return WsClient(ws)


async def open_live(
    api: Api,
    session_id: str,
    *,
    user: str = "alice",
    connection_id: str | None = None,
    after: int | None = None,
    **ws_kwargs: Any,
) -> WsClient:
    """A socket walked through the lifecycle to PROCESSING_READY with an auth frame."""
    client = await connect(api, session_id, connection_id=connection_id, after=after, **ws_kwargs)
    await client.until_state("ACCEPTED")
    await client.send({"type": "auth", "token": api.signer.mint(user, ["user"])})
    await client.until_state("PROCESSING_READY")
    return client


async def open_socket(
    http: aiohttp.ClientSession, base_url: str, session_id: str, **kwargs: Any
) -> WsClient:
    """``open_live`` on a server known by its base URL (a server process)."""
    return await open_live(Api(base_url, http, SIGNER), session_id, **kwargs)


async def eventually(check: Callable[[], Awaitable[Any]], what: str, limit: float = GUARD) -> Any:
    """Poll ``check`` until it returns something truthy; fail (not hang) after ``limit``.

    For instance, what the server records *after* the socket is already gone
    (a CLOSED event recorded once the close handshake ends)."""
    deadline = time.monotonic() + limit
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def connection_events(api: Api, connection_id: str, **call: Any) -> list[dict[str, Any]]:
    call = call or AUDITOR
    status, body = await api.call("GET", f"/v1/connections/{connection_id}/events", **call)
    assert status == 200, body
    return list(body["events"])


async def connection_states(api: Api, connection_id: str, **call: Any) -> list[str]:
    return [e["type"] for e in await connection_events(api, connection_id, **call)]


async def closed_record(api: Api, connection_id: str, **call: Any) -> dict[str, Any]:
    """The connection's CLOSED event, once recorded (polled: the server records
    it after the close handshake, which the client may see first; and a client
    that reads nothing after the 101 may ask before even CONNECTING is
    recorded, as it is once the upgrade completes)."""

    async def check() -> dict[str, Any] | None:
        status, body = await api.call(
            "GET", f"/v1/connections/{connection_id}/events", **(call or AUDITOR)
        )
        if status == 404:
            return None
        assert status == 200, body
        for event in body["events"]:
            if event["type"] == "CLOSED":
                return event
        return None

    closed: dict[str, Any] = await eventually(check, f"CLOSED of {connection_id}")
    return closed


async def refused_upgrade(
    api: Api, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """Send a WebSocket upgrade that the server is expected to refuse with an
    HTTP error before upgrading: its status and JSON body."""
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        **(headers or {}),
    }
    async with api.http.get(url, headers=upgrade) as r:
        assert r.status != 101, "the server upgraded a request it should have refused"
        return r.status, await r.json(content_type=None)


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    user: str = "alice",
    roles: tuple[str, ...] = (),
    json: Any = None,
) -> tuple[int, Any]:
    async with http.request(method, url, json=json, headers=bearer(user, *roles)) as r:
        return r.status, await r.json(content_type=None)


async def post_messages(
    http: aiohttp.ClientSession,
    base_url: str,
    session_id: str,
    count: int,
    tag: str,
    *,
    content: str = "",
) -> list[int]:
    """Post ``count`` messages one after another; their acknowledged positions."""
    positions = []
    for i in range(count):
        status, body = await call(
            http,
            "POST",
            f"{base_url}/v1/sessions/{session_id}/messages",
            json={"role": "user", "content": content or f"{tag}-{i}"},
        )
        assert status == 201, body
        positions.append(body["position"])
    return positions


async def report_progress(
    http: aiohttp.ClientSession, base_url: str, session_id: str, task_id: str, steps: int
) -> list[int]:
    """A worker (``service`` role): start a task, report ``steps`` times, complete."""
    base = f"{base_url}/v1/sessions/{session_id}/tasks"
    roles = ("service",)
    status, body = await call(
        http, "POST", base, user="worker", roles=roles, json={"task_id": task_id, "name": task_id}
    )
    assert status == 201, body
    positions = [body["position"]]
    for done in range(1, steps + 1):
        status, body = await call(
            http,
            "POST",
            f"{base}/{task_id}/progress",
            user="worker",
            roles=roles,
            json={"done": done, "total": steps},
        )
        assert status == 202, body
        positions.append(body["position"])
    status, body = await call(
        http, "POST", f"{base}/{task_id}/complete", user="worker", roles=roles, json={}
    )
    assert status == 200, body
    positions.append(body["position"])
    return positions


async def all_events(
    http: aiohttp.ClientSession, base_url: str, session_id: str, *, user: str = "alice"
) -> list[dict[str, Any]]:
    """The session's whole history over HTTP, page by page."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        status, body = await call(
            http,
            "GET",
            f"{base_url}/v1/sessions/{session_id}/events?after={after}&limit=1000",
            user=user,
        )
        assert status == 200, body
        events.extend(body["events"])
        if not body["events"]:
            return events
        after = body["next_after"]
