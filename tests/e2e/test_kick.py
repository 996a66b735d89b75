"""Kick and end through the log (PROTOCOL.md v1.1, "Operators"): the socket,
wherever it is, gets a ``state`` CLOSED frame and close 4403 with the reason,
and its CLOSED is recorded so. Real servers on real sockets: one node on
SQLite, two nodes on one PostgreSQL database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Api
from tests.e2e.wsclient import AUDITOR, WsClient, closed_record, connect, open_live

Serve = Callable[..., Any]
SERVICE: dict[str, Any] = {"user": "worker-1", "roles": ("service",)}


async def session_events(api: Api, session_id: str) -> list[dict[str, Any]]:
    status, body = await api.call("GET", f"/v1/sessions/{session_id}/events?limit=1000", **AUDITOR)
    assert status == 200, body
    return list(body["events"])


async def assert_closing_4403(client: WsClient, reason: str) -> None:
    """The socket got a ``state`` CLOSED frame, then close 4403."""
    assert await client.until_closed() == 4403
    closing = client.frames[-1]
    assert (closing["type"], closing["state"], closing["code"], closing["reason"]) == (
        "state",
        "CLOSED",
        4403,
        reason,
    )


async def assert_closed_4403(client: WsClient, reason: str) -> None:
    """The socket got its detach, a ``state`` CLOSED frame, then close 4403."""
    await assert_closing_4403(client, reason)
    detach = client.events[-1]
    assert detach["type"] == "ConnectionDetached"
    assert (detach["data"]["connection_id"], detach["data"]["reason"]) == (
        client.connection_id,
        reason,
    )


async def test_the_owner_kicks_a_socket_which_closes_4403_kicked_and_is_recorded_so(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    client = await open_live(api, "kick-1", connection_id="tab-1")
    status, body = await api.call("DELETE", "/v1/connections/tab-1")
    assert status == 202, body
    assert body["connection_id"] == "tab-1" and body["session_id"] == "kick-1"
    assert body["kicked"] is True
    await assert_closed_4403(client, "kicked")
    assert client.events[-1]["position"] == body["position"]
    closed = await closed_record(api, "tab-1")
    assert (closed["data"]["details"]["code"], closed["data"]["details"]["reason"]) == (
        4403,
        "kicked",
    )
    status, view = await api.call("GET", "/v1/sessions/kick-1")
    assert view["connections"] == []
    # Its socket's own close detached nothing more: one detach, the kick's.
    detaches = [e for e in await session_events(api, "kick-1") if e["type"] == "ConnectionDetached"]
    assert len(detaches) == 1


async def test_only_the_owner_or_a_service_kicks_and_a_refusal_records_nothing(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    client = await open_live(api, "kick-2", connection_id="tab-2")
    before = await session_events(api, "kick-2")
    for who in ({"user": "bob"}, AUDITOR, {"user": "alice", "roles": ("auditor",)}):
        status, body = await api.call("DELETE", "/v1/connections/tab-2", **who)
        assert (status, body["error"]["code"]) == (403, "forbidden"), who
    assert await session_events(api, "kick-2") == before
    status, body = await api.call("DELETE", "/v1/connections/tab-2", **SERVICE)
    assert status == 202, body
    await assert_closed_4403(client, "kicked")


async def test_kicking_a_closed_connection_answers_202_and_records_nothing(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    client = await open_live(api, "kick-3", connection_id="tab-3")
    await client.close()
    await closed_record(api, "tab-3")
    before = await session_events(api, "kick-3")
    status, body = await api.call("DELETE", "/v1/connections/tab-3")
    assert status == 202, body
    assert (body["kicked"], body["position"]) == (False, None)
    assert await session_events(api, "kick-3") == before
    status, body = await api.call("DELETE", "/v1/connections/nobody")
    assert (status, body["error"]["code"]) == (404, "connection_not_found")
    status, body = await api.call("DELETE", "/v1/connections/not%20an%20id")
    assert (status, body["error"]["code"]) == (400, "invalid_id")


async def test_ending_a_session_closes_its_live_sockets_4403_session_ended(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url, max_connections_per_session=2)
    tabs = [await open_live(api, "end-1", connection_id=f"end-tab-{i}") for i in (1, 2)]
    status, view = await api.call("DELETE", "/v1/sessions/end-1")
    assert status == 200, view
    assert (view["state"], view["connections"]) == ("ENDED", [])
    for tab in tabs:
        await assert_closed_4403(tab, "session_ended")
        closed = await closed_record(api, tab.connection_id)
        assert closed["data"]["details"] == {"code": 4403, "reason": "session_ended"}
    events = await session_events(api, "end-1")
    assert events[-1]["type"] == "SessionEnded"


# --- two nodes on one PostgreSQL database ---------------------------------------------


@pytest.fixture
async def two_nodes(postgres_url: str, serve: Serve) -> tuple[Api, Api]:
    a = await serve(postgres_url, node_id="node-a")
    b = await serve(postgres_url, node_id="node-b")
    return a, b


@pytest.mark.postgres
async def test_a_kick_through_one_node_closes_the_socket_on_another(
    two_nodes: tuple[Api, Api],
) -> None:
    a, b = two_nodes
    client = await open_live(a, "far-1", connection_id="tab-on-a")
    status, body = await b.call("DELETE", "/v1/connections/tab-on-a", **SERVICE)
    assert status == 202, body
    await assert_closed_4403(client, "kicked")
    closed = await closed_record(b, "tab-on-a")
    assert closed["data"]["details"] == {"code": 4403, "reason": "kicked"}
    status, view = await b.call("GET", "/v1/connections/tab-on-a", **AUDITOR)
    assert (view["close_code"], view["close_reason"], view["node"]) == (4403, "kicked", "node-a")


@pytest.mark.postgres
async def test_a_socket_in_its_handshake_kicked_through_another_node_ends_at_its_token(
    two_nodes: tuple[Api, Api],
) -> None:
    """Its CLOSED is recorded by the kick; the node holding it learns it when
    its token arrives, and ends it as recorded, recording nothing more."""
    a, b = two_nodes
    client = await connect(a, "far-early", connection_id="tab-early-on-a")
    await client.until_state("ACCEPTED")
    status, body = await b.call("DELETE", "/v1/connections/tab-early-on-a", **SERVICE)
    assert status == 202, body
    assert (body["kicked"], body["position"]) == (True, None)
    await client.send({"type": "auth", "token": a.signer.mint("alice")})
    await assert_closing_4403(client, "kicked")
    status, events = await b.call("GET", "/v1/connections/tab-early-on-a/events", **AUDITOR)
    assert [e["type"] for e in events["events"]] == ["CONNECTING", "ACCEPTED", "CLOSED"]
    status, _ = await b.call("GET", "/v1/sessions/far-early", **AUDITOR)
    assert status == 404  # never attached: no session was made for it


@pytest.mark.postgres
async def test_ending_a_session_through_one_node_closes_its_sockets_on_both(
    postgres_url: str, serve: Serve
) -> None:
    a = await serve(postgres_url, node_id="node-a", max_connections_per_session=2)
    b = await serve(postgres_url, node_id="node-b", max_connections_per_session=2)
    on_a = await open_live(a, "far-2", connection_id="far-tab-a")
    on_b = await open_live(b, "far-2", connection_id="far-tab-b")
    status, _ = await b.call("DELETE", "/v1/sessions/far-2")
    assert status == 200
    for tab, node in ((on_a, a), (on_b, b)):
        await assert_closed_4403(tab, "session_ended")
        closed = await closed_record(node, tab.connection_id)
        assert closed["data"]["details"] == {"code": 4403, "reason": "session_ended"}


async def test_a_socket_still_waiting_for_its_token_is_kicked_at_once(
    sqlite_url: str, serve: Serve
) -> None:
    """ "Wherever it is": a socket in its handshake is in no session's list
    yet; its CLOSED is recorded (4403 kicked) and its node closes it at once,
    with nothing recorded on the session."""
    api = await serve(sqlite_url)
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": "kick-early"})
    assert status == 201, body
    before = await session_events(api, "kick-early")
    client = await connect(api, "kick-early", connection_id="tab-early")
    await client.until_state("ACCEPTED")
    status, body = await api.call("DELETE", "/v1/connections/tab-early")
    assert status == 202, body
    assert (body["kicked"], body["position"], body["session_id"]) == (True, None, "kick-early")
    await assert_closing_4403(client, "kicked")
    closed = await closed_record(api, "tab-early")
    assert closed["data"]["details"] == {"code": 4403, "reason": "kicked"}
    status, events = await api.call("GET", "/v1/connections/tab-early/events", **AUDITOR)
    assert [e["type"] for e in events["events"]] == ["CONNECTING", "ACCEPTED", "CLOSED"]
    assert await session_events(api, "kick-early") == before
    # A stranger may not, and nothing is recorded for a refusal.
    stranger = await connect(api, "kick-early", connection_id="tab-early-2")
    await stranger.until_state("ACCEPTED")
    status, body = await api.call("DELETE", "/v1/connections/tab-early-2", user="bob")
    assert (status, body["error"]["code"]) == (403, "forbidden")
