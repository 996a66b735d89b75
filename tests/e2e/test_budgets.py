"""Budgets on a real server, as an abusive client meets them (docs/PROTOCOL.md
v1.1, "Limits"): past each one, 429 ``rate_limited`` with ``Retry-After``
and nothing recorded, or close 4429 on a live socket. Each test lowers the
one budget it is about; every other stays at its default."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import socket
import time
from collections.abc import Callable
from json import loads
from typing import Any

import aiohttp

from service.edge.budgets import SMALL_BODY
from service.edge.context import BUDGETS, STORE
from service.runtime.settings import Rate, Settings
from tests.conftest import Api
from tests.e2e.wsclient import (
    AUDITOR,
    closed_record,
    connect,
    connection_states,
    open_live,
)

Serve = Callable[..., Any]


async def answer(
    api: Api, method: str, path: str, *, user: str | None = "alice", **kwargs: Any
) -> tuple[int, Any, str | None]:
    """Status, JSON body and Retry-After header of one call."""
    headers = dict(kwargs.pop("headers", {}))
    if user is not None:
        headers.update(api.auth(user))
    async with api.http.request(method, api.url(path), headers=headers, **kwargs) as r:
        return r.status, await r.json(content_type=None), r.headers.get("Retry-After")


def assert_rate_limited(status: int, body: Any, retry_after: str | None) -> int:
    """429 in the contract's error shape, with Retry-After in whole seconds >= 1."""
    assert status == 429, body
    assert body["error"]["code"] == "rate_limited", body
    assert body["error"]["message"], body
    assert retry_after is not None and retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1
    return int(retry_after)


async def session_events(api: Api, session_id: str) -> list[dict[str, Any]]:
    status, body = await api.call("GET", f"/v1/sessions/{session_id}/events?limit=1000")
    assert status == 200, body
    return list(body["events"])


# --- HTTP ---------------------------------------------------------------------------


async def refused_after_the_upgrade(
    api: Api, session_id: str, connection_id: str, *, authenticated: bool = False
) -> None:
    """With the token in an auth frame the user is known only after the
    upgrade: the socket is closed 4429 ``rate_limited``, and that is recorded
    (a budget spent inside the attach comes after AUTHENTICATED)."""
    late = await connect(api, session_id, connection_id=connection_id)
    await late.until_state("ACCEPTED")
    await late.send({"type": "auth", "token": api.signer.mint("alice")})
    assert await late.until_closed() == 4429
    closed = await closed_record(api, connection_id)
    details = closed["data"]["details"]
    assert (details["code"], details["reason"]) == (4429, "rate_limited")
    states = await connection_states(api, connection_id)
    assert ("AUTHENTICATED" in states) == authenticated


async def churn(api: Api, sockets: int, how: Callable[[int], dict[str, Any]]) -> tuple[int, int]:
    """Open and close ``sockets`` sockets one after another (``how(n)``: the
    n-th upgrade's arguments): how many opened, and how many were refused
    with 429 and a whole number of seconds to wait."""
    opened = refused = 0
    for n in range(sockets):
        try:
            client = await connect(api, "s-churn", **how(n))
        except aiohttp.WSServerHandshakeError as e:
            assert e.status == 429, e
            assert e.headers is not None
            wait = e.headers["Retry-After"]
            assert wait.isdigit() and int(wait) >= 1, wait
            refused += 1
            continue
        opened += 1
        await client.close()
    return opened, refused


async def test_writes_past_a_users_budget_get_429_with_retry_after_and_record_nothing(
    serve: Serve,
) -> None:
    api: Api = await serve("memory://", user_writes=Rate(3, 60.0))
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": "s-w"})
    assert status == 201, body
    for n in range(2):
        message = {"role": "user", "content": f"m{n}"}
        status, body = await api.call("POST", "/v1/sessions/s-w/messages", json=message)
        assert status == 201, body
    before = await session_events(api, "s-w")

    for method, path, json in (
        ("POST", "/v1/sessions/s-w/messages", {"role": "user", "content": "one too many"}),
        ("POST", "/v1/sessions/s-w/tasks", {"name": "export"}),
        ("DELETE", "/v1/sessions/s-w", None),
    ):
        wait = assert_rate_limited(*await answer(api, method, path, json=json))
        assert wait == 20  # three a minute: the next one fits in 20 s

    assert await session_events(api, "s-w") == before
    status, view = await api.call("GET", "/v1/sessions/s-w")  # reads are not writes
    assert (status, view["state"]) == (200, "ACTIVE")
    status, body = await api.call("POST", "/v1/sessions", user="bob", json={})
    assert status == 201, body  # another user's budget is their own


async def test_sessions_past_a_users_budget_get_429_and_none_is_created(serve: Serve) -> None:
    api: Api = await serve("memory://", user_sessions=Rate(2, 60.0))
    for n in range(2):
        status, body = await api.call("POST", "/v1/sessions", json={"session_id": f"s-{n}"})
        assert status == 201, body
    assert_rate_limited(*await answer(api, "POST", "/v1/sessions", json={"session_id": "s-2"}))
    status, body = await api.call("GET", "/v1/sessions/s-2")
    assert (status, body["error"]["code"]) == (404, "session_not_found")
    # Asking again for a session the caller has creates nothing: not refused.
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": "s-0"})
    assert status == 200, body


async def test_requests_without_a_valid_token_past_the_address_budget_get_429_not_401(
    serve: Serve,
) -> None:
    api: Api = await serve("memory://", address_unauthenticated=Rate(3, 60.0))
    bad = {"Authorization": "Bearer not-a-token"}
    for _ in range(3):
        status, body, _ = await answer(api, "GET", "/v1/sessions", user=None, headers=bad)
        assert (status, body["error"]["code"]) == (401, "unauthenticated")
    for _ in range(2):
        assert_rate_limited(*await answer(api, "GET", "/v1/sessions", user=None))
    # The budget is the address's failures: a valid token from it still gets in.
    status, body = await api.call("GET", "/v1/sessions")
    assert status == 200, body


async def test_behind_a_trusted_proxy_the_forwarded_address_is_the_clients(serve: Serve) -> None:
    api: Api = await serve("memory://", address_unauthenticated=Rate(1, 60.0), forwarded_hops=1)

    async def anonymous(forwarded: str) -> int:
        headers = {"X-Forwarded-For": forwarded}
        status, _, _ = await answer(api, "GET", "/v1/sessions", user=None, headers=headers)
        return status

    assert await anonymous("198.51.100.7") == 401
    assert await anonymous("198.51.100.7") == 429
    # A client cannot pick its address: the proxy's own entry is the rightmost.
    assert await anonymous("203.0.113.1, 198.51.100.7") == 429
    assert await anonymous("198.51.100.8") == 401
    assert await anonymous("2001:db8::1") == 401
    assert await anonymous("2001:db8::2") == 429  # the same /64


async def test_the_forwarded_header_is_ignored_unless_a_proxy_is_trusted(serve: Serve) -> None:
    api: Api = await serve("memory://", address_unauthenticated=Rate(1, 60.0))
    first = {"X-Forwarded-For": "198.51.100.7"}
    second = {"X-Forwarded-For": "198.51.100.8"}
    assert (await answer(api, "GET", "/v1/sessions", user=None, headers=first))[0] == 401
    assert (await answer(api, "GET", "/v1/sessions", user=None, headers=second))[0] == 429


async def test_bodies_past_the_cap_in_flight_get_503_with_retry_after_before_being_read(
    serve: Serve,
) -> None:
    api: Api = await serve("memory://", bodies_in_flight_bytes=10_000)
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": "s-b"})
    assert status == 201, body
    # A client that sends its headers and part of an 8,000-byte body, then stalls.
    server = api.server  # type: ignore[attr-defined]
    reader, writer = await asyncio.open_connection(server.host, server.port)
    slow_body = b'{"role": "user", "content": "' + b"x" * 7969 + b'"}'
    assert len(slow_body) == 8000
    head = (
        "POST /v1/sessions/s-b/messages HTTP/1.1\r\n"
        f"Host: {server.host}:{server.port}\r\n"
        f"Authorization: {api.auth()['Authorization']}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(slow_body)}\r\n\r\n"
    )
    writer.write(head.encode() + slow_body[:100])
    await writer.drain()
    try:
        message = {"role": "user", "content": "y" * 3000}

        async def refused() -> bool:
            status, body, retry_after = await answer(
                api, "POST", "/v1/sessions/s-b/messages", json=message
            )
            if status != 503:
                return False  # the stalled request's headers had not arrived yet
            assert body["error"]["code"] == "unavailable", body
            assert retry_after == "1"
            return True

        assert await _eventually(refused)
        # Small bodies still fit beside the stalled one.
        status, body = await api.call("POST", "/v1/sessions/s-b/tasks", json={"name": "t"})
        assert status == 201, body
        writer.write(slow_body[100:])
        await writer.drain()
        reply = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert reply.startswith(b"HTTP/1.1 201"), reply
    finally:
        writer.close()
    status, body = await api.call("POST", "/v1/sessions/s-b/messages", json=message)
    assert status == 201, body


# Another client address on this machine: the server listens on 127.0.0.1,
# and Linux routes all of 127.0.0.0/8 to the loopback interface.
OTHER_ADDRESS = "127.0.0.2"
MIB = 1024 * 1024


async def stalled_body(
    api: Api, session_id: str, *, user: str, size: int = MIB, sent: int = 30
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST from OTHER_ADDRESS that announces ``size`` bytes of body,
    sends ``sent`` of them and stalls."""
    server = api.server  # type: ignore[attr-defined]
    reader, writer = await asyncio.open_connection(
        server.host, server.port, local_addr=(OTHER_ADDRESS, 0)
    )
    head = (
        f"POST /v1/sessions/{session_id}/messages HTTP/1.1\r\n"
        f"Host: {server.host}:{server.port}\r\n"
        f"Authorization: {api.auth(user)['Authorization']}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    )
    writer.write(head.encode() + b'{"role": "user", "content": "' + b"x" * (sent - 29))
    await writer.drain()
    return reader, writer


async def answered(reader: asyncio.StreamReader, within: float) -> bytes | None:
    """The start of the answer on a raw connection, or None if none came."""
    try:
        return await asyncio.wait_for(reader.read(4096), within)
    except TimeoutError:
        return None


async def test_one_address_past_its_share_of_bodies_in_flight_gets_429_and_others_are_served(
    serve: Serve,
) -> None:
    """64 connections from one address, each announcing 1 MiB of body and
    sending 30 bytes, once held the node's whole cap (64 MiB) and every
    other user's writes answered 503 while they stayed open. With every
    budget at its default, the address holds its share and is refused past
    it; other addresses are served."""
    api: Api = await serve("memory://")
    for user in ("mallory", "bob"):
        status, body = await api.call("POST", "/v1/sessions", user=user, json={"session_id": user})
        assert status == 201, body
    share = Settings().address_bodies_in_flight_bytes
    stalled = [await stalled_body(api, "mallory", user="mallory") for _ in range(64)]
    try:
        answers = await asyncio.gather(*(answered(reader, 3.0) for reader, _ in stalled))
        held = [a for a in answers if a is None]
        assert len(held) == share // MIB, len(held)
        for answer_ in answers:
            if answer_ is not None:
                assert answer_.startswith(b"HTTP/1.1 429"), answer_
                assert b"rate_limited" in answer_ and b"Retry-After: 1\r\n" in answer_, answer_
        # Another address, another user, is served while mallory's stay open.
        message = {"role": "user", "content": "y" * 3000}
        for _ in range(5):
            status, body = await api.call(
                "POST", "/v1/sessions/bob/messages", user="bob", json=message
            )
            assert status == 201, body
        # mallory's address, whoever's token, has no share left for a large
        # body: 429, not 503. A small one is served all the same: an honest
        # request beside another's bodies from the same address (one proxy,
        # one test process) does not fail because of them.
        large = {"role": "user", "content": "z" * (SMALL_BODY + 1)}
        connector = aiohttp.TCPConnector(local_addr=(OTHER_ADDRESS, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.post(
                api.url("/v1/sessions/bob/messages"), json=large, headers=api.auth("bob")
            ) as r:
                assert_rate_limited(
                    r.status, await r.json(content_type=None), r.headers.get("Retry-After")
                )
            async with http.post(
                api.url("/v1/sessions/bob/messages"), json=message, headers=api.auth("bob")
            ) as r:
                assert r.status == 201, await r.text()
    finally:
        for _, writer in stalled:
            writer.close()


async def test_a_body_that_does_not_arrive_in_time_gets_400_and_gives_back_its_share(
    serve: Serve,
) -> None:
    """A slow-loris body: headers, 30 bytes of an announced MiB, then nothing.
    Past the body deadline it is refused in the contract's error shape and
    its address's reservation is given back."""
    api: Api = await serve("memory://", body_timeout=0.5, address_bodies_in_flight_bytes=MIB)
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": "s-slow"})
    assert status == 201, body
    budgets = api.server.app[BUDGETS]  # type: ignore[attr-defined]
    reader, writer = await stalled_body(api, "s-slow", user="alice")
    try:
        started = time.monotonic()
        reply = await answered(reader, 10.0)
        assert reply is not None, "the stalled body was never answered"
        assert time.monotonic() - started < 5.0
        assert reply.startswith(b"HTTP/1.1 400"), reply
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert b"application/json" in head, head
        error = loads(payload)["error"]
        assert error["code"] == "invalid_body", error
        assert "did not arrive" in error["message"], error
    finally:
        writer.close()
    assert budgets.address_bodies.reserved(OTHER_ADDRESS) == 0
    assert budgets.bodies.reserved == 0
    # The address's whole share is free again: a full-size body from it fits.
    connector = aiohttp.TCPConnector(local_addr=(OTHER_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        message = {"role": "user", "content": "z" * (MIB - 100)}
        async with http.post(
            api.url("/v1/sessions/s-slow/messages"), json=message, headers=api.auth()
        ) as r:
            assert r.status == 201, await r.text()


async def _eventually(check: Callable[[], Any], tries: int = 100) -> bool:
    for _ in range(tries):
        if await check():
            return True
        await asyncio.sleep(0.02)
    return False


# --- WebSocket ----------------------------------------------------------------------


def logged(api: Api) -> int:
    """How many events the node's store holds (its log's head)."""
    return int(api.server.app[STORE].ping())  # type: ignore[attr-defined]


async def upgrade(
    api: Api, session_id: str, headers: dict[str, str] | None = None, **params: Any
) -> tuple[int, Any, str | None]:
    """A WebSocket upgrade the server is expected to refuse before upgrading:
    status, JSON body, Retry-After."""
    request = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        **(headers or {}),
    }
    async with api.http.get(api.ws_url(session_id, **params), headers=request) as r:
        assert r.status != 101, "the server upgraded a request it should have refused"
        return r.status, await r.json(content_type=None), r.headers.get("Retry-After")


async def test_tokenless_upgrades_past_the_address_pending_budget_get_429_recording_nothing(
    sqlite_url: str, serve: Serve
) -> None:
    api: Api = await serve(sqlite_url, address_pending_upgrades=2)
    waiting = [await connect(api, f"s-{n}", connection_id=f"c-{n}") for n in range(2)]
    for client in waiting:
        await client.until_state("ACCEPTED")
    head = logged(api)
    assert_rate_limited(*await upgrade(api, "s-2", connection_id="c-2"))
    assert logged(api) == head
    status, _ = await api.call("GET", "/v1/connections/c-2", **AUDITOR)
    assert status == 404
    # A token in the upgrade request is not the address's business.
    with_token = await connect(api, "s-3", headers=api.auth("carol"))
    await with_token.until_state("PROCESSING_READY")
    # Once one of the waiting sockets authenticates, its place is free.
    await waiting[0].send({"type": "auth", "token": api.signer.mint("alice")})
    await waiting[0].until_state("PROCESSING_READY")
    third = await open_live(api, "s-2", connection_id="c-2")
    assert third.connection_id == "c-2"


async def test_a_tokenless_flood_is_refused_with_429_after_the_address_budget_of_failures(
    sqlite_url: str, serve: Serve
) -> None:
    """The attack that left 10,773 connections in 20 s: open a socket, send no
    token, close, again. With the default budgets the address gets its budget
    of failures (60 a minute) and then 429s that record nothing."""
    api: Api = await serve(sqlite_url)
    started = time.monotonic()
    opened, refused = await churn(api, 150, lambda n: {"connection_id": f"flood-{n}"})
    # 60 at once, refilled at one a second while the flood lasts, and the one
    # still closing (its failure not yet counted) when the next came.
    assert opened <= 60 + math.ceil(time.monotonic() - started) + 2, opened
    assert refused >= 150 - opened and refused > 0
    head = logged(api)
    for n in range(5):
        status, body, retry_after = await upgrade(api, "s-flood", connection_id=f"late-{n}")
        assert_rate_limited(status, body, retry_after)
    assert logged(api) == head
    # A client of that address with a token is not refused.
    client = await connect(api, "s-flood", headers=api.auth())
    await client.until_state("PROCESSING_READY")


async def test_a_users_live_sockets_past_the_budget_get_429_before_the_upgrade_or_4429(
    sqlite_url: str, serve: Serve
) -> None:
    api: Api = await serve(sqlite_url, user_sockets=2, max_connections_per_session=5)
    first = await open_live(api, "s-1")
    second = await connect(api, "s-2", headers=api.auth())
    await second.until_state("PROCESSING_READY")
    head = logged(api)
    # The token in the upgrade request names the user: refused before anything.
    wait = assert_rate_limited(*await upgrade(api, "s-3", api.auth(), connection_id="c-3"))
    assert wait == 1
    assert logged(api) == head
    await refused_after_the_upgrade(api, "s-3", "c-4")
    # Another user is not concerned; and a closed socket gives its place back.
    bob = await connect(api, "s-b", headers=api.auth("bob"))
    await bob.until_state("PROCESSING_READY")
    await first.close()
    await closed_record(api, first.connection_id)
    again = await connect(api, "s-1", headers=api.auth())
    await again.until_state("PROCESSING_READY")


async def test_a_users_upgrades_past_the_budget_get_429_before_the_upgrade_or_4429(
    sqlite_url: str, serve: Serve
) -> None:
    """Sockets opened and closed one after another hold at most one live
    socket at a time; what bounds them is the user's upgrades over time."""
    api: Api = await serve(sqlite_url, user_upgrades=Rate(3, 60.0))
    for n in range(3):
        client = await connect(api, "s-u", connection_id=f"c-{n}", headers=api.auth())
        await client.until_state("PROCESSING_READY")
        await client.close()
        await closed_record(api, f"c-{n}")
    head = logged(api)
    # The token in the upgrade request names the user: refused before anything.
    wait = assert_rate_limited(*await upgrade(api, "s-u", api.auth(), connection_id="c-3"))
    assert wait == 20  # three a minute: the next one fits in 20 s
    assert logged(api) == head
    status, _ = await api.call("GET", "/v1/connections/c-3", **AUDITOR)
    assert status == 404
    await refused_after_the_upgrade(api, "s-u", "c-4")
    # Another user's upgrades are their own.
    bob = await connect(api, "s-b", headers=api.auth("bob"))
    await bob.until_state("PROCESSING_READY")


async def test_one_users_socket_churn_is_refused_with_429_after_its_budget_of_upgrades(
    sqlite_url: str, serve: Serve
) -> None:
    """One user opening and closing sockets as fast as it can, with its token
    in the upgrade request: its budget of upgrades, then 429s that record
    nothing."""
    budget = Rate(20, 10.0)
    api: Api = await serve(sqlite_url, user_upgrades=budget)
    started = time.monotonic()
    opened, refused = await churn(api, budget.count + 80, lambda _: {"headers": api.auth()})
    elapsed = time.monotonic() - started
    assert opened <= budget.count + math.ceil(elapsed * budget.count / budget.period) + 1, opened
    assert refused > 0


async def test_message_frames_past_the_users_write_budget_close_4429(
    sqlite_url: str, serve: Serve
) -> None:
    api: Api = await serve(sqlite_url, user_writes=Rate(3, 60.0))
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": "s-m"})
    assert status == 201, body
    client = await open_live(api, "s-m", connection_id="c-m")
    for n in range(2):
        await client.send({"type": "message", "content": f"m{n}"})
    await client.until(
        lambda f: f.get("type") == "event" and f["event"]["data"].get("content") == "m1"
    )
    messages = len(await session_events(api, "s-m"))
    await client.send({"type": "message", "content": "one too many"})
    assert await client.until_closed() == 4429
    last = client.frames[-1]
    assert (last["state"], last["code"], last["reason"]) == ("CLOSED", 4429, "rate_limited")
    closed = await closed_record(api, "c-m")
    details = closed["data"]["details"]
    assert (details["code"], details["reason"]) == (4429, "rate_limited")
    contents = [e["data"].get("content") for e in await session_events(api, "s-m")]
    assert "one too many" not in contents and len(contents) == messages + 1  # + detached
    # One budget for both ways of writing.
    assert_rate_limited(
        *await answer(
            api, "POST", "/v1/sessions/s-m/messages", json={"content": "x", "role": "user"}
        )
    )


async def test_token_refreshes_past_the_users_write_budget_close_4429(
    sqlite_url: str, serve: Serve
) -> None:
    """A refresh records an event (TokenRefreshed), so it is a write like a
    message: a socket cannot record refreshes without bound."""
    api: Api = await serve(sqlite_url, user_writes=Rate(3, 60.0))
    client = await open_live(api, "s-r", connection_id="c-r")
    token = api.signer.mint("alice")
    for _ in range(3):
        await client.send({"type": "auth", "token": token})
    await client.until(lambda f: sum(g.get("type") == "token" for g in client.frames) == 3)
    await client.send({"type": "auth", "token": token})
    assert await client.until_closed() == 4429
    last = client.frames[-1]
    assert (last["state"], last["code"], last["reason"]) == ("CLOSED", 4429, "rate_limited")
    status, body = await api.call("GET", "/v1/connections/c-r/events", **AUDITOR)
    assert status == 200, body
    types = [e["type"] for e in body["events"]]
    assert types.count("TokenRefreshed") == 3, types
    assert types[-1] == "CLOSED"


async def test_a_socket_that_would_create_a_session_past_the_users_budget_gets_429_or_4429(
    sqlite_url: str, serve: Serve
) -> None:
    api: Api = await serve(sqlite_url, user_sessions=Rate(1, 60.0), max_connections_per_session=5)
    first = await open_live(api, "s-1")  # held: a socket let go of would close
    head = logged(api)
    # The token in the upgrade request names the user, whose sessions are
    # spent, and s-2 does not exist: refused before anything is recorded.
    wait = assert_rate_limited(*await upgrade(api, "s-2", api.auth(), connection_id="c-late"))
    assert wait >= 59  # one a minute, spent just now
    assert logged(api) == head
    status, _ = await api.call("GET", "/v1/connections/c-late", **AUDITOR)
    assert status == 404
    status, _ = await api.call("GET", "/v1/sessions/s-2")
    assert status == 404
    # Joining a session that exists creates nothing: admitted, token in the
    # upgrade request or in an auth frame.
    joined = await connect(api, "s-1", headers=api.auth())
    await joined.until_state("PROCESSING_READY")
    await open_live(api, "s-1")
    await refused_after_the_upgrade(api, "s-3", "c-later", authenticated=True)
    status, _ = await api.call("GET", "/v1/sessions/s-3")
    assert status == 404
    # Another user's sessions are their own.
    bob = await connect(api, "s-bob", headers=api.auth("bob"))
    await bob.until_state("PROCESSING_READY")
    await first.close()


# --- honest heavy use ---------------------------------------------------------------


async def test_the_benchs_heavy_honest_load_from_one_address_is_never_refused(
    sqlite_url: str, serve: Serve
) -> None:
    """The shape of ``python -m bench``, with every budget at its default: 40
    clients from one address, each a user of its own, doing full handshakes
    (a new session each, the token in an auth frame) as fast as they can,
    while 16 workers post progress on one session. What counts against the
    address is what never authenticates: none of it is refused."""
    api: Api = await serve(sqlite_url)
    owner = await open_live(api, "s-progress", user="owner")
    status, body = await api.call(
        "POST", "/v1/sessions/s-progress/tasks", user="owner", json={"task_id": "t", "name": "n"}
    )
    assert status == 201, body
    handshakes: list[str] = []
    acknowledged: list[int] = []

    async def client(n: int) -> None:
        for k in range(5):
            socket = await connect(api, f"hs-{n}-{k}")
            await socket.until_state("ACCEPTED")
            await socket.send({"type": "auth", "token": api.signer.mint(f"bench-{n}", ["user"])})
            await socket.until_state("PROCESSING_READY")
            await socket.close()
            handshakes.append(socket.connection_id)

    async def worker(n: int) -> None:
        for k in range(25):
            status, body = await api.call(
                "POST",
                "/v1/sessions/s-progress/tasks/t/progress",
                user=f"worker-{n}",
                roles=("service",),
                json={"done": k + 1},
            )
            assert status == 202, body
            acknowledged.append(body["position"])

    async with asyncio.timeout(120):
        await asyncio.gather(*(client(n) for n in range(40)), *(worker(n) for n in range(16)))
    assert len(handshakes) == 200
    assert len(acknowledged) == 400
    last = max(acknowledged)
    await owner.until_event(last)
    progress = [e for e in owner.events if e["type"] == "TaskProgressed"]
    assert len(progress) == 400


async def unread_answer(
    api: Api, path: str, *, user: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A GET of ``path`` from OTHER_ADDRESS whose answer is not read: the
    connection's receive buffer is kept small and nothing is taken from it."""
    server = api.server  # type: ignore[attr-defined]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((OTHER_ADDRESS, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
            f"Authorization: {api.auth(user)['Authorization']}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return reader, writer


async def received_until_closed(reader: asyncio.StreamReader) -> int:
    """Bytes read from a connection until the server closed it."""
    received = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            received += len(chunk)
    return received


async def get_from_other_address(api: Api, path: str, user: str) -> tuple[int, Any, str | None]:
    connector = aiohttp.TCPConnector(local_addr=(OTHER_ADDRESS, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(api.url(path), headers=api.auth(user)) as r,
    ):
        return r.status, await r.json(), r.headers.get("Retry-After")


async def test_answers_an_address_does_not_read_are_held_to_its_share_and_dropped_at_the_deadline(
    serve: Serve,
) -> None:
    """200 GETs of a 4 MB page of events whose answers were never read took
    a node from 62 MB to 1.9 GB of resident memory, every answer held until
    its client let go. An address now holds at most its share of answers
    being sent (past it: 429, that address only), another address is
    served meanwhile, and an answer that has not left within the deadline
    loses its connection and gives its share back."""
    api: Api = await serve(
        "memory://", page_bytes=8 * MIB, address_answers_in_flight_bytes=MIB, answer_timeout=1.0
    )
    status, body = await api.call("POST", "/v1/sessions", user="mallory", json={"session_id": "m"})
    assert status == 201, body
    content = "b" * (MIB - 1024)
    for n in range(8):
        message = {"role": "user", "content": content, "message_id": f"m{n}"}
        status, body = await api.call(
            "POST", "/v1/sessions/m/messages", user="mallory", json=message
        )
        assert status == 201, body
    path = "/v1/sessions/m/events?limit=1000"
    reader, writer = await unread_answer(api, path, user="mallory")
    try:
        await asyncio.sleep(0.3)  # its answer is built and waits on the client
        assert_rate_limited(*await get_from_other_address(api, path, "mallory"))
        # A write's answer is never held to it: what the write recorded is
        # recorded (a session whose view, with its metadata, is over 64 KiB).
        connector = aiohttp.TCPConnector(local_addr=(OTHER_ADDRESS, 0))
        big = {"session_id": "m-big", "metadata": {"notes": "n" * (100 * 1024)}}
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.post(api.url("/v1/sessions"), json=big, headers=api.auth("mallory")) as r,
        ):
            assert r.status == 201, await r.text()
            assert len(await r.read()) > 64 * 1024
        # Another address is served in full meanwhile.
        status, body = await api.call("GET", path, user="mallory")
        assert status == 200 and len(body["events"]) == 9, status
        # Past the deadline the unread answer's connection is dropped with
        # the rest of its answer unsent, and the address is served again.
        await asyncio.sleep(1.5)
        received = await asyncio.wait_for(received_until_closed(reader), 10)
        assert received < 8 * MIB, received
        status, body, _ = await get_from_other_address(api, path, "mallory")
        assert status == 200 and len(body["events"]) == 9, status
    finally:
        writer.close()
