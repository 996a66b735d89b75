"""Tokens on a live socket (PROTOCOL.md v1.1) against a real server on real
sockets, with tokens that live a few seconds: a socket whose token expires is
warned, closed 4401 token_expired and recorded so; a socket refreshed with an
``auth`` frame outlives its first token, and the refresh is in its record.
Nothing here asserts on how long anything took: each test waits for frames."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jwt

from tests.conftest import Api
from tests.e2e.wsclient import (
    WsClient,
    closed_record,
    connect,
    connection_events,
)

Serve = Callable[..., Any]
SHORT = 3  # seconds a short-lived token lives
# A token to refresh: its warning comes a quarter of its life ahead, a margin
# for the client to answer in even on a busy machine.
TO_REFRESH = 5


def exp_of(token: str) -> int:
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


async def live_with(api: Api, session_id: str, connection_id: str, token: str) -> WsClient:
    client = await connect(api, session_id, connection_id=connection_id)
    await client.until_state("ACCEPTED")
    await client.send({"type": "auth", "token": token})
    await client.until_state("PROCESSING_READY")
    return client


async def test_a_socket_whose_token_expires_is_warned_closed_4401_token_expired_and_recorded(
    store_url: str, serve: Serve
) -> None:
    api: Api = await serve(store_url)
    token = api.signer.mint("alice", ["user"], ttl=SHORT)
    client = await live_with(api, "tok-1", "tok-1-c", token)

    assert await client.until_closed() == 4401
    warning = client.first("token_expiring")
    assert warning == {"type": "token_expiring", "exp": exp_of(token)}
    closing = client.frames[-1]
    assert (closing["type"], closing["state"], closing["code"], closing["reason"]) == (
        "state",
        "CLOSED",
        4401,
        "token_expired",
    )
    assert client.frames.index(warning) < client.frames.index(closing)

    record = await closed_record(api, "tok-1-c")
    assert record["data"]["details"] == {"code": 4401, "reason": "token_expired"}
    types = [e["type"] for e in await connection_events(api, "tok-1-c")]
    assert types[-2:] == ["PROCESSING_READY", "CLOSED"]
    status, view = await api.call("GET", "/v1/connections/tok-1-c")
    assert status == 200, view
    assert (view["state"], view["close_code"], view["close_reason"]) == (
        "CLOSED",
        4401,
        "token_expired",
    )


async def test_a_refreshed_socket_outlives_its_first_token_and_the_refresh_is_recorded(
    sqlite_url: str, serve: Serve
) -> None:
    api: Api = await serve(sqlite_url, max_connections_per_session=2)
    first = api.signer.mint("alice", ["user"], ttl=TO_REFRESH)
    # A witness whose token expires no earlier than the first: once it is
    # closed token_expired, the first token has expired too.
    witness_token = api.signer.mint("alice", ["user"], ttl=TO_REFRESH)
    assert exp_of(witness_token) >= exp_of(first)
    client = await live_with(api, "tok-2", "tok-2-c", first)
    witness = await live_with(api, "tok-2", "tok-2-witness", witness_token)

    await client.until_type("token_expiring")
    fresh = api.signer.mint("alice", ["user"], ttl=3600)
    await client.send({"type": "auth", "token": fresh, "ref": "refresh-1"})
    assert await client.until_type("token") == {"type": "token", "exp": exp_of(fresh)}

    assert await witness.until_closed() == 4401
    status, body = await api.call(
        "POST", "/v1/sessions/tok-2/messages", json={"role": "user", "content": "after exp"}
    )
    assert status == 201, body
    event = await client.until_event(body["position"])
    assert event["data"]["content"] == "after exp"
    await client.send({"type": "message", "content": "from the socket"})
    mine = await client.until(
        lambda f: (
            f.get("type") == "event"
            and f["event"]["type"] == "MessageRecorded"
            and f["event"]["data"]["content"] == "from the socket"
        )
    )
    assert mine["event"]["data"]["connection_id"] == "tok-2-c"
    assert client.close_code is None

    events = await connection_events(api, "tok-2-c")
    refreshed = [e for e in events if e["type"] == "TokenRefreshed"]
    assert [e["data"] for e in refreshed] == [
        {"user_id": "alice", "roles": ["user"], "exp": exp_of(fresh)}
    ]
    assert refreshed[0]["connection_id"] == "tok-2-c"
    status, view = await api.call("GET", "/v1/connections/tok-2-c")
    assert status == 200, view
    assert (view["state"], view["position"]) == ("PROCESSING_READY", events[-1]["position"])
    await client.close()
