"""Helpers for the progress, resume, client, audit and crash tests: sockets
walked to PROCESSING_READY, producers posting over HTTP, and polling with a
guard (a broken server fails a test instead of hanging it; nothing here
asserts on how long anything took)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from service.application.auth import TokenSigner
from tests.conftest import TEST_SECRET

GUARD = 20.0  # seconds: fail instead of hang

SIGNER = TokenSigner(TEST_SECRET)


def bearer(user: str = "alice", *roles: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + SIGNER.mint(user, list(roles) or ["user"])}


class Closed(AssertionError):
    """The socket closed while the test still expected a frame."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"socket closed with {code}")
        self.code = code


@dataclass
class Socket:
    """One WebSocket and every frame it has received, events kept apart."""

    ws: aiohttp.ClientWebSocketResponse
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def positions(self) -> list[int]:
        return [e["position"] for e in self.events]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [f["event"] for f in self.frames if f.get("type") == "event"]

    @property
    def connection_id(self) -> str:
        return str(self.frames[0]["connection_id"])

    async def receive(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=GUARD)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise Closed(self.ws.close_code)
        frame: dict[str, Any] = orjson.loads(msg.data)
        self.frames.append(frame)
        return frame

    async def until(self, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(GUARD):
            while True:
                frame = await self.receive()
                if done(frame):
                    return frame

    async def until_state(self, state: str) -> dict[str, Any]:
        return await self.until(
            lambda f: f.get("type") in ("welcome", "state") and f.get("state") == state
        )

    async def until_position(self, position: int) -> None:
        if self.positions and self.positions[-1] >= position:
            return
        await self.until(lambda f: f.get("type") == "event" and f["event"]["position"] >= position)

    async def until_closed(self) -> int | None:
        """Read (and keep) frames until the server closes; the close code."""
        async with asyncio.timeout(GUARD):
            while True:
                msg = await self.ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.frames.append(orjson.loads(msg.data))
                else:
                    return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


async def open_socket(
    http: aiohttp.ClientSession,
    base_url: str,
    session_id: str,
    *,
    user: str = "alice",
    connection_id: str | None = None,
    after: int | None = None,
    live: bool = True,
    **ws_kwargs: Any,
) -> Socket:
    """A socket authenticated with an ``auth`` frame and, unless ``live`` is
    False, walked to PROCESSING_READY."""
    url = f"{base_url.rstrip('/')}/v1/ws?session_id={session_id}"
    if connection_id is not None:
        url += f"&connection_id={connection_id}"
    if after is not None:
        url += f"&after={after}"
    sock = Socket(await http.ws_connect(url, **ws_kwargs))
    await sock.until_state("ACCEPTED")
    await sock.ws.send_json({"type": "auth", "token": SIGNER.mint(user, ["user"])})
    if live:
        await sock.until_state("PROCESSING_READY")
    return sock


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


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail after the guard."""
    deadline = time.monotonic() + GUARD
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


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
