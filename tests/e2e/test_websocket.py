"""The WebSocket lifecycle of PROTOCOL.md against a real server on a real socket."""

from __future__ import annotations

import asyncio
import gc
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from service.application.auth import TokenSigner
from service.edge.context import STORE
from tests.conftest import TEST_SECRET, Api
from tests.e2e.wsclient import (
    AUDITOR,
    SocketClosed,
    closed_record,
    connect,
    connection_events,
    connection_states,
    open_live,
    refused_upgrade,
)

Serve = Callable[..., Any]

LIFECYCLE = ["CONNECTING", "ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"]


async def session_events(api: Api, session_id: str) -> list[dict[str, Any]]:
    status, body = await api.call("GET", f"/v1/sessions/{session_id}/events?limit=1000", **AUDITOR)
    assert status == 200, body
    return list(body["events"])


async def post_message(api: Api, session_id: str, content: str, **extra: Any) -> int:
    status, body = await api.call(
        "POST",
        f"/v1/sessions/{session_id}/messages",
        json={"role": "user", "content": content, **extra},
    )
    assert status == 201, body
    return int(body["position"])


# --- the whole walk ----------------------------------------------------------------------


async def test_full_lifecycle_walks_every_state_under_the_proposed_id(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url)
    sid = "session-1735095123-abc123"
    cid = "conn-1735095123-xyz.789:A_b"
    status, _ = await api.call("POST", "/v1/sessions", json={"session_id": sid})
    assert status == 201
    await post_message(api, sid, "recorded before the socket existed")

    client = await connect(api, sid, connection_id=cid)
    welcome = await client.receive()
    assert welcome["type"] == "welcome"
    assert welcome["connection_id"] == cid
    assert welcome["state"] == "ACCEPTED"
    await client.send({"type": "auth", "token": api.signer.mint("alice")})
    ready = await client.until_state("PROCESSING_READY")

    kinds = [(f["type"], f.get("state")) for f in client.frames]
    assert kinds == [
        ("welcome", "ACCEPTED"),
        ("state", "AUTHENTICATED"),
        ("state", "SERVICES_READY"),
        ("event", None),
        ("event", None),
        ("event", None),
        ("state", "PROCESSING_READY"),
    ]
    backlog = client.events
    assert [e["position"] for e in backlog] == [1, 2, 3]
    assert [e["type"] for e in backlog] == [
        "SessionCreated",
        "MessageRecorded",
        "ConnectionAttached",
    ]
    assert backlog[1]["data"]["content"] == "recorded before the socket existed"
    assert backlog[2]["data"]["connection_id"] == cid
    assert all(e["session_id"] == sid for e in backlog)
    assert ready["position"] == 3
    assert ready["session_id"] == sid
    for frame in client.frames:
        if frame["type"] in ("welcome", "state"):
            assert frame["connection_id"] == cid
    # Backlog events are the very objects the HTTP history shows.
    assert backlog == (await session_events(api, sid))[:3]

    status, view = await api.call("GET", f"/v1/sessions/{sid}")
    assert status == 200, view
    assert view["connections"] == [cid]
    status, conn = await api.call("GET", f"/v1/connections/{cid}")
    assert status == 200, conn
    assert conn["connection_id"] == cid and conn["session_id"] == sid
    assert conn["state"] == "PROCESSING_READY"

    # Live: an event recorded now arrives once, in order.
    position = await post_message(api, sid, "live one")
    live = await client.until_event(position)
    assert live["position"] == 4 and live["data"]["content"] == "live one"

    await client.close()
    closed = await closed_record(api, cid)
    assert closed["data"]["details"] == {"code": 1000, "reason": "normal"}
    history = await connection_events(api, cid)
    assert [e["type"] for e in history] == [*LIFECYCLE, "CLOSED"]
    assert [e["position"] for e in history] == [1, 2, 3, 4, 5, 6]
    assert {e["connection_id"] for e in history} == {cid}
    assert history[0]["data"]["connection_id"] == cid
    assert history[0]["data"]["proposed"] is True
    status, conn = await api.call("GET", f"/v1/connections/{cid}")
    assert status == 200, conn
    assert conn["state"] == "CLOSED"
    assert (conn["close_code"], conn["close_reason"]) == (1000, "normal")
    assert conn["closed_at"] is not None
    detached = (await session_events(api, sid))[-1]
    assert detached["type"] == "ConnectionDetached"
    assert detached["data"]["connection_id"] == cid


async def test_a_socket_without_a_proposed_id_uses_the_generated_one_everywhere(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    client = await open_live(api, "s-genid")
    cid = client.connection_id
    assert {f["connection_id"] for f in client.frames if f["type"] != "event"} == {cid}
    attached = [e for e in client.events if e["type"] == "ConnectionAttached"]
    assert attached[0]["data"]["connection_id"] == cid
    await client.close()
    await closed_record(api, cid)
    assert await connection_states(api, cid) == [*LIFECYCLE, "CLOSED"]


async def test_a_socket_resuming_after_a_position_gets_only_the_later_events(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    await api.call("POST", "/v1/sessions", json={"session_id": "s-after"})
    for i in range(4):
        await post_message(api, "s-after", f"m{i}")
    client = await open_live(api, "s-after", after=3)
    positions = [e["position"] for e in client.events]
    assert positions == [4, 5, 6]
    assert client.frames[-1]["position"] == 6
    await client.close()


async def test_the_authorization_header_on_the_upgrade_authenticates_the_socket(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    client = await connect(api, "s-header", connection_id="conn-header", headers=api.auth("alice"))
    await client.until_state("PROCESSING_READY")
    assert client.states == ["ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"]
    assert client.first("state", state="AUTHENTICATED")["user_id"] == "alice"  # type: ignore[index]
    await client.close()
    await closed_record(api, "conn-header")
    assert await connection_states(api, "conn-header") == [*LIFECYCLE, "CLOSED"]


def server_frames(data: bytes) -> list[dict[str, Any]]:
    """The JSON of the unmasked text frames in ``data`` (what a server writes)."""
    frames = []
    while data:
        assert data[0] == 0x81 and not data[1] & 0x80, data[:2]
        size, start = data[1], 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(data[2:10], "big"), 10
        frames.append(orjson.loads(data[start : start + size]))
        data = data[start + size :]
    return frames


async def test_the_frames_after_the_token_leave_in_one_write(
    sqlite_url: str, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AUTHENTICATED, SERVICES_READY, the backlog and PROCESSING_READY are
    written to the socket together: nothing waits between them."""
    api = await serve(sqlite_url)
    await api.call("POST", "/v1/sessions", json={"session_id": "s-one-write"})
    await post_message(api, "s-one-write", "x" * 300)  # a frame over 125 bytes
    writes: list[bytes] = []
    real = asyncio.selector_events._SelectorSocketTransport.write  # type: ignore[attr-defined]

    def write(transport: Any, data: bytes) -> None:
        if data[:1] == b"\x81" and not data[1] & 0x80:  # a server's text frames
            writes.append(bytes(data))
        real(transport, data)

    monkeypatch.setattr(asyncio.selector_events._SelectorSocketTransport, "write", write)  # type: ignore[attr-defined]
    client = await open_live(api, "s-one-write", connection_id="c-one-write")
    monkeypatch.undo()
    written = [server_frames(data) for data in writes]
    assert [[f.get("state") or f["type"] for f in frames] for frames in written] == [
        ["ACCEPTED"],
        ["AUTHENTICATED", "SERVICES_READY", "event", "event", "event", "PROCESSING_READY"],
    ]
    assert written[1][3]["event"]["data"]["content"] == "x" * 300
    assert [f for frames in written for f in frames] == client.frames
    await client.close()


async def test_a_socket_that_negotiated_compression_walks_the_same_lifecycle(
    sqlite_url: str, serve: Serve
) -> None:
    """Browsers ask for permessage-deflate: aiohttp compresses each frame."""
    api = await serve(sqlite_url)
    await api.call("POST", "/v1/sessions", json={"session_id": "s-deflate"})
    await post_message(api, "s-deflate", "y" * 70_000)  # a frame over 65,535 bytes
    client = await open_live(api, "s-deflate", compress=15)
    assert client.ws.compress == 15
    assert client.states == ["ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"]
    assert [e["position"] for e in client.events] == [1, 2, 3]
    assert client.events[1]["data"]["content"] == "y" * 70_000
    position = await post_message(api, "s-deflate", "live")
    assert (await client.until_event(position))["data"]["content"] == "live"
    await client.close()


async def test_a_frame_over_65535_bytes_arrives_whole_without_compression(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    await api.call("POST", "/v1/sessions", json={"session_id": "s-long"})
    client = await open_live(api, "s-long")
    assert not client.ws.compress
    position = await post_message(api, "s-long", "z" * 70_000)
    assert (await client.until_event(position))["data"]["content"] == "z" * 70_000
    await client.close()


# --- refused before the upgrade ---------------------------------------------------------


async def test_a_proposed_connection_id_already_used_is_409_before_the_upgrade(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    first = await open_live(api, "s-taken", connection_id="conn-taken")
    status, body = await refused_upgrade(
        api, api.ws_url("s-other", connection_id="conn-taken"), api.auth()
    )
    assert status == 409
    assert body["error"]["code"] == "connection_id_taken"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.http.ws_connect(api.ws_url("s-other", connection_id="conn-taken"))
    assert refused.value.status == 409
    # The first connection is untouched; its record is its own.
    assert await connection_states(api, "conn-taken") == LIFECYCLE
    await first.close()
    await closed_record(api, "conn-taken")
    assert await connection_states(api, "conn-taken") == [*LIFECYCLE, "CLOSED"]
    # A closed connection's ID stays taken.
    status, body = await refused_upgrade(api, api.ws_url("s-taken", connection_id="conn-taken"))
    assert status == 409 and body["error"]["code"] == "connection_id_taken"


async def test_a_proposed_connection_id_is_looked_up_by_the_writer_thread(
    sqlite_url: str, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Asked of the writer with the batch it is in, not handed to a reader
    # thread of its own: the look-up is one of the handshake's costs.
    api = await serve(sqlite_url)
    store = api.server.app[STORE]  # type: ignore[attr-defined]
    asked_on: list[str] = []
    real_exists = store.stream_exists

    def exists(stream_id: str) -> bool:
        asked_on.append(threading.current_thread().name)
        return bool(real_exists(stream_id))

    monkeypatch.setattr(store, "stream_exists", exists)
    first = await open_live(api, "s-looked-up", connection_id="conn-looked-up")
    await first.close()
    await closed_record(api, "conn-looked-up")
    status, body = await refused_upgrade(
        api, api.ws_url("s-looked-up", connection_id="conn-looked-up"), api.auth()
    )
    assert status == 409 and body["error"]["code"] == "connection_id_taken"
    assert asked_on == ["sessiond-writer", "sessiond-writer"]


@pytest.mark.parametrize(
    "query",
    [
        "session_id=bad%20id",
        "session_id=" + "z" * 129,
        "session_id=",
        "connection_id=c-1",
        "session_id=s-ok&connection_id=bad%2Fid",
        "session_id=s-ok&connection_id=",
    ],
    ids=["space", "too-long", "empty", "missing", "bad-connection-id", "empty-connection-id"],
)
async def test_an_invalid_id_is_400_before_the_upgrade(
    sqlite_url: str, serve: Serve, query: str
) -> None:
    api = await serve(sqlite_url)
    status, body = await refused_upgrade(api, api.url("/v1/ws?" + query), api.auth())
    assert status == 400, body
    assert body == {"error": {"code": "invalid_id", "message": body["error"]["message"]}}
    status, listing = await api.call("GET", "/v1/sessions", **AUDITOR)
    assert status == 200, listing
    assert listing["sessions"] == []


async def test_an_upgrade_from_an_origin_not_listed_is_403_forbidden_origin(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url, cors_origins=("http://localhost:3000",))
    status, body = await refused_upgrade(
        api,
        api.ws_url("s-origin", connection_id="conn-evil"),
        {"Origin": "http://evil.example", **api.auth()},
    )
    assert status == 403
    assert body["error"]["code"] == "forbidden_origin"
    status, _ = await api.call("GET", "/v1/connections/conn-evil", **AUDITOR)
    assert status == 404
    allowed = await connect(
        api, "s-origin", connection_id="conn-good", headers={"Origin": "http://localhost:3000"}
    )
    await allowed.until_state("ACCEPTED")
    await allowed.close()


async def test_an_upgrade_naming_its_session_twice_is_400_and_records_nothing(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    url = api.ws_url("s-twice-a", connection_id="conn-twice") + "&session_id=s-twice-b"
    status, body = await refused_upgrade(api, url, api.auth())
    assert (status, body["error"]["code"]) == (400, "invalid_query"), body
    assert "session_id" in body["error"]["message"]
    status, _ = await api.call("GET", "/v1/connections/conn-twice", **AUDITOR)
    assert status == 404
    for session in ("s-twice-a", "s-twice-b"):
        status, _ = await api.call("GET", f"/v1/sessions/{session}", **AUDITOR)
        assert status == 404


# --- refused after the upgrade ------------------------------------------------------------


def expired_token() -> str:
    now = int(time.time())
    return jwt.encode({"sub": "alice", "exp": now - 60}, TEST_SECRET, algorithm="HS256")


def signed(claims: dict[str, Any]) -> str:
    """A token signed with the server's key, with ``claims`` as they are."""
    return jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 600, **claims}, TEST_SECRET, algorithm="HS256"
    )


# Signed with the server's key, and still malformed.
MALFORMED_CLAIMS: dict[str, dict[str, Any]] = {
    "unknown-role": {"roles": ["admin"]},
    "miscapitalised-role": {"roles": ["Auditor"]},
    "no-role": {"roles": []},
    "string-exp": {"exp": "4102444800"},
}


@pytest.mark.parametrize(
    "token",
    ["garbage", "expired", "bad-signature", "empty", *MALFORMED_CLAIMS],
)
async def test_a_bad_token_closes_the_socket_with_4401(
    sqlite_url: str, serve: Serve, token: str
) -> None:
    api = await serve(sqlite_url)
    sent = {
        "garbage": "not.a.jwt",
        "expired": expired_token(),
        "bad-signature": TokenSigner("some-other-secret-0123456789abcdef").mint("alice"),
        "empty": "",
        **{name: signed(claims) for name, claims in MALFORMED_CLAIMS.items()},
    }[token]
    client = await connect(api, "s-badtoken", connection_id=f"conn-{token}")
    await client.until_state("ACCEPTED")
    await client.send({"type": "auth", "token": sent})
    assert await client.until_closed() == 4401
    assert client.states[-1] == "CLOSED"
    closed = await closed_record(api, f"conn-{token}")
    assert closed["data"]["details"]["code"] == 4401
    assert await connection_states(api, f"conn-{token}") == ["CONNECTING", "ACCEPTED", "CLOSED"]
    status, _ = await api.call("GET", "/v1/sessions/s-badtoken", **AUDITOR)
    assert status == 404


@pytest.mark.parametrize("token", ["garbage", *MALFORMED_CLAIMS])
async def test_a_bad_authorization_header_closes_the_socket_with_4401(
    sqlite_url: str, serve: Serve, token: str
) -> None:
    api = await serve(sqlite_url)
    sent = "x" if token == "garbage" else signed(MALFORMED_CLAIMS[token])
    cid = f"conn-badheader-{token}"
    client = await connect(
        api, "s-badheader", connection_id=cid, headers={"Authorization": f"Bearer {sent}"}
    )
    assert await client.until_closed() == 4401
    assert (await closed_record(api, cid))["data"]["details"]["code"] == 4401
    assert await connection_states(api, cid) == ["CONNECTING", "ACCEPTED", "CLOSED"]


async def test_an_authorization_header_of_another_scheme_leaves_the_socket_to_its_auth_frame(
    sqlite_url: str, serve: Serve
) -> None:
    """A browser behind a proxy that asks for HTTP Basic credentials sends
    them on the upgrade by itself; the page cannot stop it. Such a header
    carries no token of sessiond's, so the socket waits for its auth frame."""
    api = await serve(sqlite_url)
    client = await connect(
        api,
        "s-basic",
        connection_id="conn-basic",
        headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    )
    await client.until_state("ACCEPTED")
    await client.send({"type": "auth", "token": api.signer.mint("alice")})
    await client.until_state("PROCESSING_READY")
    await client.close()
    await closed_record(api, "conn-basic")
    assert await connection_states(api, "conn-basic") == [*LIFECYCLE, "CLOSED"]


async def test_no_auth_within_the_auth_timeout_closes_the_socket_with_4401(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url, auth_timeout=0.3)
    client = await connect(api, "s-silent", connection_id="conn-silent")
    assert await client.until_closed() == 4401
    assert client.states == ["ACCEPTED", "CLOSED"]
    closed = await closed_record(api, "conn-silent")
    assert closed["data"]["details"] == {"code": 4401, "reason": "auth_timeout"}
    assert await connection_states(api, "conn-silent") == ["CONNECTING", "ACCEPTED", "CLOSED"]


async def test_another_users_session_closes_the_socket_with_4403(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    status, _ = await api.call("POST", "/v1/sessions", json={"session_id": "s-alices"})
    assert status == 201
    client = await connect(api, "s-alices", connection_id="conn-bob")
    await client.until_state("ACCEPTED")
    await client.send({"type": "auth", "token": api.signer.mint("bob")})
    assert await client.until_closed() == 4403
    assert client.events == [], "bob must see none of alice's events"
    closed = await closed_record(api, "conn-bob")
    assert closed["data"]["details"]["code"] == 4403
    assert await connection_states(api, "conn-bob") == [
        "CONNECTING",
        "ACCEPTED",
        "AUTHENTICATED",
        "CLOSED",
    ]
    assert [e["type"] for e in await session_events(api, "s-alices")] == ["SessionCreated"]


async def test_a_header_token_for_another_users_session_is_refused_after_authenticated(
    sqlite_url: str, serve: Serve
) -> None:
    """With the token on the upgrade, ACCEPTED, AUTHENTICATED and the attach
    are one commit (ADR 0015); a refused attach still ends the same way."""
    api = await serve(sqlite_url)
    status, _ = await api.call("POST", "/v1/sessions", json={"session_id": "s-alices-2"})
    assert status == 201
    client = await connect(api, "s-alices-2", connection_id="conn-bob-2", headers=api.auth("bob"))
    assert await client.until_closed() == 4403
    assert client.states[:2] == ["ACCEPTED", "AUTHENTICATED"]
    assert client.events == []
    assert await connection_states(api, "conn-bob-2") == [
        "CONNECTING",
        "ACCEPTED",
        "AUTHENTICATED",
        "CLOSED",
    ]
    assert [e["type"] for e in await session_events(api, "s-alices-2")] == ["SessionCreated"]


# --- frames -------------------------------------------------------------------------------


async def test_a_message_frame_before_processing_ready_is_not_ready_and_the_socket_stays_open(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    client = await connect(api, "s-early", connection_id="conn-early")
    await client.until_state("ACCEPTED")
    await client.send({"type": "message", "content": "too soon", "ref": "early-1"})
    error = await client.until_type("error")
    assert error["code"] == "not_ready"
    assert error["ref"] == "early-1"
    await client.send({"type": "auth", "token": api.signer.mint("alice")})
    await client.until_state("PROCESSING_READY")
    await client.send({"type": "message", "content": "now", "ref": "early-2"})
    event = await client.until(
        lambda f: f["type"] == "event" and f["event"]["type"] == "MessageRecorded"
    )
    assert event["event"]["data"]["content"] == "now"
    contents = [e["data"].get("content") for e in await session_events(api, "s-early")]
    assert "too soon" not in contents
    await client.close()


@pytest.mark.parametrize("header_token", [False, True], ids=["auth-frame", "header-token"])
async def test_frames_sent_before_the_welcome_are_answered_after_it(
    sqlite_url: str, serve: Serve, header_token: bool
) -> None:
    """The welcome is the first frame, and every recorded transition is
    announced before anything else, however early the client speaks."""
    api = await serve(sqlite_url)
    cid = f"conn-eager-{header_token}"
    headers = {"Authorization": f"Bearer {api.signer.mint('alice')}"} if header_token else None
    client = await connect(api, "s-eager", connection_id=cid, headers=headers)
    # Sent the moment the upgrade's answer arrived, before any frame came.
    await client.send({"type": "bogus", "ref": "r-1"})
    await client.send({"type": "message", "content": "hi", "ref": "r-2"})
    if not header_token:
        await client.send({"type": "auth", "token": api.signer.mint("alice")})
    await client.until_state("PROCESSING_READY")
    if header_token:
        # Read once the socket is live (its token came with the upgrade): the
        # message is recorded, and comes back as an event.
        await client.until(
            lambda f: f["type"] == "event" and f["event"]["type"] == "MessageRecorded"
        )
        expected = [("unknown_type", "r-1")]
    else:
        expected = [("unknown_type", "r-1"), ("not_ready", "r-2")]
    while sum(f["type"] == "error" for f in client.frames) < len(expected):
        await client.receive()
    assert client.frames[0]["type"] == "welcome", client.frames
    states = [f["state"] for f in client.frames if f["type"] in ("welcome", "state")]
    assert states == ["ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"]
    errors = [(f["code"], f["ref"]) for f in client.frames if f["type"] == "error"]
    assert errors == expected
    await client.close()


async def test_message_frames_reach_every_socket_of_the_session_including_the_sender(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url, max_connections_per_session=2)
    sender = await open_live(api, "s-chat", connection_id="conn-sender")
    other = await open_live(api, "s-chat", connection_id="conn-other")
    await sender.send(
        {
            "type": "message",
            "role": "user",
            "content": "hello both",
            "message_id": "msg-frame-1",
            "ref": "r-1",
        }
    )

    def is_hello(frame: dict[str, Any]) -> bool:
        return (
            frame["type"] == "event" and frame["event"]["data"].get("message_id") == "msg-frame-1"
        )

    got_sender = (await sender.until(is_hello))["event"]
    got_other = (await other.until(is_hello))["event"]
    assert got_sender == got_other
    assert got_sender["type"] == "MessageRecorded"
    assert got_sender["data"]["content"] == "hello both"
    assert got_sender["data"]["connection_id"] == "conn-sender"
    assert got_sender["session_id"] == "s-chat"
    history = await session_events(api, "s-chat")
    assert got_sender in history
    assert [e["position"] for e in history] == list(range(1, len(history) + 1))
    # Each socket saw its session's positions once, in order, without gaps.
    for client in (sender, other):
        positions = [e["position"] for e in client.events]
        assert positions == list(range(positions[0], positions[-1] + 1))
    assert sender.first("error") is None and other.first("error") is None
    await sender.close()
    await other.close()


async def test_bad_frames_get_error_frames_with_their_ref_and_the_socket_stays_open(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    client = await open_live(api, "s-badframes", connection_id="conn-badframes")
    await client.send_raw("{this is not json")
    error = await client.until_type("error")
    assert error["code"] == "bad_frame" and "ref" not in error
    await client.send({"type": "teleport", "ref": "r-unknown"})
    error = await client.until_type("error")
    assert (error["code"], error["ref"]) == ("unknown_type", "r-unknown")
    await client.send({"type": "message", "content": 42, "ref": "r-types"})
    error = await client.until_type("error")
    assert (error["code"], error["ref"]) == ("bad_frame", "r-types")
    await client.send({"type": "message", "content": "x", "colour": "red", "ref": "r-field"})
    error = await client.until_type("error")
    assert (error["code"], error["ref"]) == ("bad_frame", "r-field")
    await client.send_raw("[1, 2, 3]")
    error = await client.until_type("error")
    assert error["code"] == "bad_frame"
    # Valid JSON that msgspec cannot decode (a number past any float, an
    # escaped lone surrogate): refused, and the ref still echoed.
    for raw, ref in (
        ('{"type": "message", "content": "x", "metadata": {"v": 1e999}, "ref": "r-inf"}', "r-inf"),
        ('{"type": "message", "content": "\\ud800", "ref": "r-surrogate"}', "r-surrogate"),
    ):
        await client.send_raw(raw)
        error = await client.until_type("error")
        assert (error["code"], error.get("ref")) == ("bad_frame", ref), error
    for frame in client.frames:
        if frame["type"] == "error":
            assert set(frame) <= {"type", "code", "message", "ref"}
            assert isinstance(frame["message"], str)
    await client.send({"type": "message", "content": "still here"})
    event = await client.until(
        lambda f: f["type"] == "event" and f["event"]["type"] == "MessageRecorded"
    )
    assert event["event"]["data"]["content"] == "still here"
    await client.close()
    assert (await closed_record(api, "conn-badframes"))["data"]["details"]["code"] == 1000


async def test_a_frame_nested_past_any_parsers_depth_gets_bad_frame_with_its_ref(
    sqlite_url: str, serve: Serve
) -> None:
    """Nested thousands deep (past what msgspec and the standard library
    decode), a frame is still refused with its ``ref`` echoed, wherever the
    ref stands; before the token, such an ``auth`` frame is a bad token."""
    api = await serve(sqlite_url)
    client = await open_live(api, "s-deep", connection_id="conn-deep")
    got: list[str | None] = []
    deep = "[" * 5000 + "]" * 5000
    for raw in (
        f'{{"ref": "r-first", "type": "message", "content": "x", "metadata": {{"a": {deep}}}}}',
        f'{{"type": "message", "content": "x", "metadata": {{"a": {deep}}}, "ref": "r-last"}}',
        # A "ref" nested in the metadata is not the frame's; escapes decode.
        f'{{"type": "message", "content": "x", "metadata": {{"a": {deep}, "ref": "no"}}, '
        r'"ref": "r-\"q\u00e9"}',
    ):
        await client.send_raw(raw)
        error = await client.until_type("error")
        assert error["code"] == "bad_frame", error
        got.append(error.get("ref"))
    assert got == ["r-first", "r-last", 'r-"q\u00e9']
    await client.close()
    waiting = await connect(api, "s-deep-auth", connection_id="conn-deep-auth")
    await waiting.until_state("ACCEPTED")
    await waiting.send_raw(f'{{"type": "auth", "token": {deep}, "ref": "r-auth"}}')
    assert await waiting.until_closed() == 4401


async def test_more_than_ten_bad_frames_in_a_minute_close_the_socket_with_4400(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    client = await open_live(api, "s-spam", connection_id="conn-spam")
    for i in range(10):
        await client.send({"type": "nonsense", "ref": f"bad-{i}"})
        error = await client.until_type("error")
        assert error["ref"] == f"bad-{i}"
    # Ten were tolerated: the socket still works.
    await client.send({"type": "message", "content": "after ten"})
    await client.until(lambda f: f["type"] == "event" and f["event"]["type"] == "MessageRecorded")
    await client.send({"type": "nonsense", "ref": "bad-10"})
    assert await client.until_closed() == 4400
    errors = [f for f in client.frames if f["type"] == "error"]
    assert [e["ref"] for e in errors] == [f"bad-{i}" for i in range(11)]
    assert client.states[-1] == "CLOSED"
    closed = await closed_record(api, "conn-spam")
    assert closed["data"]["details"]["code"] == 4400
    assert await connection_states(api, "conn-spam") == [*LIFECYCLE, "CLOSED"]


async def test_a_frame_larger_than_the_limit_closes_the_socket_with_1009(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url, max_frame_bytes=2048)
    client = await open_live(api, "s-huge", connection_id="conn-huge")
    # "Up to" the limit: a frame of exactly 2,048 bytes is taken.
    head = '{"type": "message", "content": "'
    exact = head + "x" * (2048 - len(head) - 2) + '"}'
    assert len(exact.encode()) == 2048
    await client.send_raw(exact)
    await client.until(lambda f: f["type"] == "event" and f["event"]["type"] == "MessageRecorded")
    await client.send_raw(head + "x" * (2049 - len(head) - 2) + '"}')
    assert await client.until_closed() == 1009
    # Announced as every close is, though the WebSocket layer decided it.
    assert client.frames[-1] == {
        "type": "state",
        "connection_id": "conn-huge",
        "state": "CLOSED",
        "code": 1009,
        "reason": "too_large",
    }
    closed = await closed_record(api, "conn-huge")
    assert closed["data"]["details"] == {"code": 1009, "reason": "too_large"}
    assert await connection_states(api, "conn-huge") == [*LIFECYCLE, "CLOSED"]
    contents = [e["data"].get("content", "") for e in await session_events(api, "s-huge")]
    assert "x" * (2049 - len(head) - 2) not in contents


# --- supersede, heartbeats, drops -------------------------------------------------------------


async def test_a_second_socket_supersedes_the_first_with_4409(store_url: str, serve: Serve) -> None:
    api = await serve(store_url)
    first = await open_live(api, "s-super", connection_id="conn-first")
    second = await open_live(api, "s-super", connection_id="conn-second")
    assert second.first("state", state="SERVICES_READY")["superseded"] == ["conn-first"]  # type: ignore[index]
    assert await first.until_closed() == 4409
    last = first.frames[-1]
    assert (last["type"], last["state"], last["code"]) == ("state", "CLOSED", 4409)
    closed = await closed_record(api, "conn-first")
    assert closed["data"]["details"] == {"code": 4409, "reason": "superseded"}
    assert await connection_states(api, "conn-first") == [*LIFECYCLE, "CLOSED"]
    status, view = await api.call("GET", "/v1/sessions/s-super")
    assert status == 200, view
    assert view["connections"] == ["conn-second"]
    status, conn = await api.call("GET", "/v1/connections/conn-first")
    assert status == 200, conn
    assert (conn["state"], conn["close_code"], conn["close_reason"]) == (
        "CLOSED",
        4409,
        "superseded",
    )
    history = await session_events(api, "s-super")
    detached = [e for e in history if e["type"] == "ConnectionDetached"]
    assert [d["data"]["connection_id"] for d in detached] == ["conn-first"]
    assert detached[0]["data"]["superseded_by"] == "conn-second"
    # The new socket is live and gets what comes next.
    position = await post_message(api, "s-super", "for the new tab")
    assert (await second.until_event(position))["data"]["content"] == "for the new tab"
    await second.close()


async def test_reload_supersedes_the_old_socket(sqlite_url: str, serve: Serve) -> None:
    """A page reload: the same session, a new socket (its own new ID); the old
    tab's socket is closed and recorded, the new one gets the whole history."""
    api = await serve(sqlite_url)
    old_tab = await open_live(api, "sess_mgpresmh_6655kc3b0")
    before = await post_message(api, "sess_mgpresmh_6655kc3b0", "before reload")
    await old_tab.until_event(before)

    new_tab = await open_live(api, "sess_mgpresmh_6655kc3b0")
    assert new_tab.connection_id != old_tab.connection_id
    assert await old_tab.until_closed() == 4409
    contents = [e["data"].get("content") for e in new_tab.events]
    assert "before reload" in contents
    assert new_tab.events[0]["position"] == 1

    after = await post_message(api, "sess_mgpresmh_6655kc3b0", "after reload")
    assert (await new_tab.until_event(after))["data"]["content"] == "after reload"
    assert "after reload" not in [e["data"].get("content") for e in old_tab.events]

    closed = await closed_record(api, old_tab.connection_id)
    assert closed["data"]["details"] == {"code": 4409, "reason": "superseded"}
    status, view = await api.call("GET", "/v1/sessions/sess_mgpresmh_6655kc3b0")
    assert status == 200, view
    assert view["connections"] == [new_tab.connection_id]
    await new_tab.close()


async def test_a_socket_that_never_answers_pings_is_closed_as_timeout(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url, heartbeat=0.3)
    client = await open_live(api, "s-mute", connection_id="conn-mute", autoping=False)
    await client.until_closed()
    closed = await closed_record(api, "conn-mute")
    assert closed["data"]["details"]["reason"] == "timeout"
    assert await connection_states(api, "conn-mute") == [*LIFECYCLE, "CLOSED"]
    status, view = await api.call("GET", "/v1/sessions/s-mute")
    assert status == 200, view
    assert view["connections"] == []


async def test_a_client_close_is_recorded_with_its_code_and_its_own_words(
    sqlite_url: str, serve: Serve
) -> None:
    """The code the client sent, sessiond's reason for the kind of close, and
    the text of the client's close frame, as it sent it."""
    api = await serve(sqlite_url)
    client = await open_live(api, "s-bye", connection_id="conn-bye")
    await client.ws.close(code=4321, message="bye now, ünïcode".encode())
    closed = await closed_record(api, "conn-bye")
    assert closed["data"]["details"] == {
        "code": 4321,
        "reason": "client_closed",
        "said": "bye now, ünïcode",
    }
    status, view = await api.call("GET", "/v1/connections/conn-bye", **AUDITOR)
    assert (status, view["close_code"], view["close_reason"]) == (200, 4321, "client_closed")
    # Without text, nothing is said.
    quiet = await open_live(api, "s-bye-2", connection_id="conn-quiet")
    await quiet.ws.close(code=1000)
    assert (await closed_record(api, "conn-quiet"))["data"]["details"] == {
        "code": 1000,
        "reason": "normal",
    }
    # A close frame with no status code at all (a browser's close() with no
    # arguments) is answered 1000, and 1000 is recorded.
    bare = await open_live(api, "s-bye-3", connection_id="conn-no-code")
    await bare.ws.send_frame(b"", aiohttp.WSMsgType.CLOSE)
    assert await bare.until_closed() == 1000
    assert (await closed_record(api, "conn-no-code"))["data"]["details"] == {
        "code": 1000,
        "reason": "normal",
    }


async def test_a_client_that_vanishes_is_recorded_closed(sqlite_url: str, serve: Serve) -> None:
    api = await serve(sqlite_url)
    client = await open_live(api, "s-vanish", connection_id="conn-vanish")
    client.drop()
    closed = await closed_record(api, "conn-vanish")
    assert closed["data"]["details"]["code"] == 1006
    status, view = await api.call("GET", "/v1/sessions/s-vanish")
    assert status == 200, view
    assert view["connections"] == []
    with pytest.raises((SocketClosed, aiohttp.ClientError, ConnectionError)):
        await client.receive(within=5)


async def test_every_connection_ends_closed_whichever_way_it_ended(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url, auth_timeout=0.5, max_frame_bytes=2048)
    await api.call("POST", "/v1/sessions", json={"session_id": "s-alice-only"})
    ended: dict[str, int] = {}

    normal = await open_live(api, "s-ends-1", connection_id="end-normal")
    await normal.close()
    ended["end-normal"] = 1000

    custom = await open_live(api, "s-ends-2", connection_id="end-custom")
    await custom.close(code=4000)
    ended["end-custom"] = 4000

    superseded = await open_live(api, "s-ends-3", connection_id="end-superseded")
    newer = await open_live(api, "s-ends-3", connection_id="end-newer")
    await superseded.until_closed()
    ended["end-superseded"] = 4409
    await newer.close()
    ended["end-newer"] = 1000

    silent = await connect(api, "s-ends-4", connection_id="end-silent")
    await silent.until_closed()
    ended["end-silent"] = 4401

    bad_token = await connect(api, "s-ends-5", connection_id="end-badtoken")
    await bad_token.until_state("ACCEPTED")
    await bad_token.send({"type": "auth", "token": "nope"})
    await bad_token.until_closed()
    ended["end-badtoken"] = 4401

    forbidden = await connect(api, "s-alice-only", connection_id="end-forbidden")
    await forbidden.until_state("ACCEPTED")
    await forbidden.send({"type": "auth", "token": api.signer.mint("mallory")})
    await forbidden.until_closed()
    ended["end-forbidden"] = 4403

    large = await open_live(api, "s-ends-6", connection_id="end-large")
    await large.send_raw("y" * 4096)
    await large.until_closed()
    ended["end-large"] = 1009

    spam = await open_live(api, "s-ends-7", connection_id="end-spam")
    for _ in range(11):
        await spam.send_raw("!")
    await spam.until_closed()
    ended["end-spam"] = 4400

    early = await connect(api, "s-ends-8", connection_id="end-early-close")
    await early.until_state("ACCEPTED")
    await early.close()
    ended["end-early-close"] = 1000

    dropped = await open_live(api, "s-ends-9", connection_id="end-dropped")
    dropped.drop()
    ended["end-dropped"] = 1006

    for cid, code in ended.items():
        closed = await closed_record(api, cid)
        assert closed["data"]["details"]["code"] == code, (cid, closed)
        states = await connection_states(api, cid)
        assert states.count("CLOSED") == 1, (cid, states)
        assert states[-1] == "CLOSED", (cid, states)
        assert states == [*LIFECYCLE[: len(states) - 1], "CLOSED"], (cid, states)
        status, conn = await api.call("GET", f"/v1/connections/{cid}", **AUDITOR)
        assert status == 200, conn
        assert (conn["state"], conn["close_code"]) == ("CLOSED", code), conn


async def test_a_socket_in_processing_ready_receives_events_recorded_while_it_connected(
    sqlite_url: str, serve: Serve
) -> None:
    """Positions arrive once, in order, with no gap at the backlog/live seam,
    while another writer keeps recording."""
    api = await serve(sqlite_url)
    await api.call("POST", "/v1/sessions", json={"session_id": "s-seam"})

    async def writer() -> list[int]:
        return [await post_message(api, "s-seam", f"w{i}") for i in range(40)]

    writing = asyncio.create_task(writer())
    client = await open_live(api, "s-seam", connection_id="conn-seam")
    positions = await writing
    await client.until_event(positions[-1])
    got = [e["position"] for e in client.events]
    assert got == list(range(1, got[-1] + 1))
    assert got[-1] >= positions[-1]
    await client.close()


# --- resources ------------------------------------------------------------------------------


async def test_a_finished_connection_is_freed_without_the_cycle_collector(
    sqlite_url: str, serve: Serve
) -> None:
    """A connection's own objects hold no reference cycle (ADR 0017): with the
    cyclic collector off, a closed socket's LiveConnection, its protocol and
    its seam are gone anyway."""
    api = await serve(sqlite_url)
    gc.collect()
    gc.disable()
    try:
        # Closed by the client, and ended by the server (each socket
        # supersedes the one before it: 4409, its receiver cancelled).
        for i in range(3):
            client = await connect(api, "s-freed", connection_id=f"conn-freed-{i}")
            await client.until_state("ACCEPTED")
            await client.send({"type": "auth", "token": api.signer.mint("alice")})
            await client.until_state("PROCESSING_READY")
            if i > 0:
                await closed_record(api, f"conn-freed-{i - 1}")
        await client.close()
        await closed_record(api, "conn-freed-2")
        deadline = time.monotonic() + 5
        ours = ("LiveConnection", "ConnectionProtocol", "Seam")
        while True:
            alive = [o for o in gc.get_objects() if type(o).__name__ in ours]
            if not alive or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        # What still holds each one, should one be left: the cycle to break.
        holders = [
            (type(o).__name__, [type(r).__name__ for r in gc.get_referrers(o)]) for o in alive
        ]
        assert alive == [], holders
    finally:
        gc.enable()


def test_serve_freezes_what_start_up_loaded_and_collects_less_often() -> None:
    from service.cli.main import GC_THRESHOLDS, tune_garbage_collector

    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.parametrize(
    ("payload", "opcode", "code", "reason"),
    [
        (b"\xff\xfe not utf-8", aiohttp.WSMsgType.TEXT, 1007, "invalid_utf8"),
        (b"x", 0x3, 1002, "protocol_error"),  # a reserved opcode
        # Close frames with codes RFC 6455 lets no endpoint send: 1005 and
        # 1006 are reserved for "none was given" and "the connection
        # dropped", and no code is 5000 or more. A client that sends one
        # broke the protocol; it is not a drop (1006) nor its own code.
        (struct.pack(">H", 1005), aiohttp.WSMsgType.CLOSE, 1002, "protocol_error"),
        (struct.pack(">H", 1006), aiohttp.WSMsgType.CLOSE, 1002, "protocol_error"),
        (struct.pack(">H", 5000), aiohttp.WSMsgType.CLOSE, 1002, "protocol_error"),
        (struct.pack(">H", 65535), aiohttp.WSMsgType.CLOSE, 1002, "protocol_error"),
    ],
    ids=[
        "invalid-utf8",
        "reserved-opcode",
        "close-1005",
        "close-1006",
        "close-5000",
        "close-65535",
    ],
)
async def test_a_close_the_websocket_layer_sends_is_recorded_with_the_code_sent(
    sqlite_url: str, serve: Serve, payload: bytes, opcode: int, code: int, reason: str
) -> None:
    api = await serve(sqlite_url)
    cid = f"conn-layer-{code}-{payload.hex()}"
    client = await open_live(api, "s-layer", connection_id=cid)
    await client.ws.send_frame(payload, opcode)  # type: ignore[arg-type]
    assert await client.until_closed() == code
    assert client.frames[-1] == {
        "type": "state",
        "connection_id": cid,
        "state": "CLOSED",
        "code": code,
        "reason": reason,
    }
    closed = await closed_record(api, cid)
    assert closed["data"]["details"] == {"code": code, "reason": reason}


async def test_a_non_utf8_byte_in_the_upgrades_authorization_header_closes_4401(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    host, port = api.base_url.split("//", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /v1/ws?session_id=s-bytes&connection_id=conn-bytes HTTP/1.1\r\nHost: x\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Authorization: Bearer abc\xff\xfedef\r\n\r\n"
    )
    await writer.drain()
    assert (await asyncio.wait_for(reader.read(12), 10)).startswith(b"HTTP/1.1 101")
    closed = await closed_record(api, "conn-bytes")
    writer.close()
    assert closed["data"]["details"]["code"] == 4401
    assert await connection_states(api, "conn-bytes") == ["CONNECTING", "ACCEPTED", "CLOSED"]
