"""Budgets on a real server, as an abusive client meets them (docs/PROTOCOL.md
v1.1, "Limits"): past each one, 429 ``rate_limited`` with ``Retry-After``
and nothing recorded, or close 4429 on a live socket. Each test lowers the
one budget it is about; every other stays at its default."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from service.runtime.settings import Rate
from tests.conftest import Api

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


async def _eventually(check: Callable[[], Any], tries: int = 100) -> bool:
    for _ in range(tries):
        if await check():
            return True
        await asyncio.sleep(0.02)
    return False
