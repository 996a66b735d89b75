"""Tokens on a live socket, on the protocol alone (tests/unit/protocol_world.py):
the warning ahead of exp, the close at it, refreshes by the same user, by
another, with a bad token, and nothing recorded after exp but the close."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from domain.errors import TokenExpired
from domain.ids import connection_stream
from service.application import commands
from service.edge.effects import Close
from service.edge.protocol import Limits
from tests.unit.protocol_world import SECRET, Socket, World

EXPIRED = (Close.UNAUTHENTICATED, "token_expired")
LIFECYCLE = ["CONNECTING", "ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"]


def live(world: World, token: str, cid: str = "c-1", sid: str = "s-1") -> Socket:
    socket = Socket(world, cid, sid).upgrade()
    socket.send({"type": "auth", "token": token})
    assert socket.protocol.state == "PROCESSING_READY", socket.frames
    return socket


def exp_of(token: str) -> int:
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


def end_of(socket: Socket) -> float:
    """When the socket's token expires, on the socket's clock."""
    expires_at = socket.protocol.expiry.expires_at
    assert expires_at is not None
    return expires_at


def of_type(socket: Socket, kind: str) -> list[dict[str, Any]]:
    return [f for f in socket.frames if f["type"] == kind]


def connection_events(world: World, connection_id: str) -> list[tuple[str, dict[str, Any]]]:
    stream = connection_stream(connection_id)
    return [(e.type_name(), e.payload()) for e in world.log if e.originator_id == stream]


def test_at_its_tokens_exp_the_socket_is_closed_4401_token_expired_and_the_close_recorded() -> None:
    world = World()
    socket = live(world, world.token(ttl=100))
    end = end_of(socket)
    socket.tick(end - 0.001)
    assert socket.closed is None
    socket.tick(end)
    assert socket.closed == EXPIRED
    assert socket.frames[-1] == {
        "type": "state",
        "connection_id": "c-1",
        "state": "CLOSED",
        "code": 4401,
        "reason": "token_expired",
    }
    last, details = connection_events(world, "c-1")[-1]
    assert (last, details["details"]) == ("CLOSED", {"code": 4401, "reason": "token_expired"})


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "message", "content": "too late"},
        {"type": "auth", "token": "REFRESH"},
        "not json",
    ],
    ids=["message", "refresh", "bad frame"],
)
def test_a_frame_arriving_at_exp_before_the_timer_fires_records_nothing_but_the_close(
    frame: dict[str, Any] | str,
) -> None:
    world = World()
    socket = live(world, world.token(ttl=100))
    before = world.connection_states("c-1")
    if isinstance(frame, dict) and frame.get("token") == "REFRESH":
        frame = {**frame, "token": world.token(ttl=1000)}
    socket.now = end_of(socket)  # the clock reached exp; the timer has not fired yet
    socket.send(frame)
    assert socket.closed == EXPIRED
    assert world.connection_states("c-1") == [*before, "CLOSED"]
    assert [e["type"] for e in world.session_events("s-1")][-1] == "ConnectionDetached"
    assert "record_message" not in world.commands and "refresh_token" not in world.commands
    assert socket.errors() == []


def test_token_expiring_is_sent_once_ahead_of_exp_with_the_tokens_exp() -> None:
    world = World()
    token = world.token(ttl=400)
    socket = live(world, token)
    end = end_of(socket)
    assert socket.wake_at == pytest.approx(end - 60)  # the default lead
    socket.tick(end - 61)
    assert of_type(socket, "token_expiring") == []
    socket.tick(end - 60)
    assert of_type(socket, "token_expiring") == [{"type": "token_expiring", "exp": exp_of(token)}]
    assert socket.wake_at == end
    socket.tick(end - 1)
    assert len(of_type(socket, "token_expiring")) == 1
    assert socket.closed is None


def test_a_short_tokens_warning_comes_a_quarter_of_its_life_ahead_not_at_once() -> None:
    world = World()
    socket = live(world, world.token(ttl=8))
    end = end_of(socket)
    assert socket.wake_at == pytest.approx(end * 0.75)
    assert of_type(socket, "token_expiring") == []


def test_with_no_warning_lead_the_socket_is_closed_at_exp_without_a_warning() -> None:
    world = World()
    world.limits = Limits(token_warning=0)
    socket = live(world, world.token(ttl=100))
    end = end_of(socket)
    assert socket.wake_at == end
    socket.tick(end)
    assert socket.closed == EXPIRED
    assert of_type(socket, "token_expiring") == []


def test_a_refresh_by_the_same_user_is_recorded_answered_and_moves_the_deadline() -> None:
    world = World()
    socket = live(world, world.token(ttl=100))
    old_end = end_of(socket)
    socket.tick(old_end - 10)
    assert len(of_type(socket, "token_expiring")) == 1
    states = world.connection_states("c-1")

    fresh = world.token(ttl=1000)
    socket.send({"type": "auth", "token": fresh, "ref": "r-1"})

    assert socket.frames[-1] == {"type": "token", "exp": exp_of(fresh)}
    assert world.connection_states("c-1") == [*states, "TokenRefreshed"]
    assert connection_events(world, "c-1")[-1][1] == {
        "user_id": "alice",
        "roles": ["user"],
        "exp": exp_of(fresh),
    }
    assert socket.protocol.state == "PROCESSING_READY"
    assert world.aggregates[connection_stream("c-1")].state == "PROCESSING_READY"  # type: ignore[attr-defined]

    # Past the first token's exp the socket is live: it records, and it is
    # warned again ahead of the new exp, then closed at it.
    socket.tick(old_end + 1)
    assert socket.closed is None
    socket.send({"type": "message", "content": "still here"})
    assert world.session_events("s-1")[-1]["data"]["content"] == "still here"
    new_end = end_of(socket)
    assert new_end > old_end
    socket.tick(new_end - 1)
    assert len(of_type(socket, "token_expiring")) == 2
    socket.tick(new_end)
    assert socket.closed == EXPIRED


def test_a_refresh_with_a_token_for_another_user_closes_4403_and_records_no_refresh() -> None:
    world = World()
    socket = live(world, world.token(ttl=100))
    socket.send({"type": "auth", "token": world.token("bob", ttl=1000)})
    assert socket.closed is not None and socket.closed[0] == Close.FORBIDDEN
    states = world.connection_states("c-1")
    assert states[-1] == "CLOSED" and "TokenRefreshed" not in states


def test_a_refresh_with_a_token_that_may_not_hold_the_session_closes_4403() -> None:
    world = World()
    socket = live(world, world.token(ttl=100))
    socket.send({"type": "auth", "token": world.token("alice", "auditor", ttl=1000)})
    assert socket.closed is not None and socket.closed[0] == Close.FORBIDDEN
    assert "TokenRefreshed" not in world.connection_states("c-1")


def _signed(**claims: Any) -> str:
    """Alice's token, signed with the server's key, with ``claims`` as given."""
    return jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 3600, **claims}, SECRET, algorithm="HS256"
    )


def _expired() -> str:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "make",
    [
        lambda: "not.a.jwt",
        _expired,
        lambda: jwt.encode(
            {"sub": "alice", "exp": 2**31},
            "another-key-0123456789abcdef-0123456789",
            algorithm="HS256",
        ),
        lambda: _signed(roles=["admin"]),
        lambda: _signed(roles=["Auditor"]),
        lambda: _signed(exp=str(int(time.time()) + 3600)),
    ],
    ids=["malformed", "expired", "wrong key", "unknown role", "miscapitalised role", "string exp"],
)
def test_a_refresh_with_a_bad_token_is_answered_with_an_error_and_the_old_token_holds(
    make: Any,
) -> None:
    world = World()
    socket = live(world, world.token(ttl=100))
    end = end_of(socket)
    states = world.connection_states("c-1")
    socket.send({"type": "auth", "token": make(), "ref": "r-2"})
    error = socket.errors()[-1]
    assert (error["code"], error["ref"]) == ("unauthenticated", "r-2")
    assert socket.closed is None
    assert world.connection_states("c-1") == states
    assert end_of(socket) == end
    socket.tick(end)
    assert socket.closed == EXPIRED


def test_a_refresh_the_store_cannot_record_is_answered_unavailable_and_the_old_token_holds() -> (
    None
):
    world = World()
    socket = live(world, world.token(ttl=100))
    end = end_of(socket)
    world.down = True
    socket.send({"type": "auth", "token": world.token(ttl=1000)})
    assert socket.errors()[-1]["code"] == "unavailable"
    assert of_type(socket, "token") == []
    world.down = False
    socket.tick(end)
    assert socket.closed == EXPIRED


def test_a_token_that_expires_during_the_handshake_closes_it_once_it_is_announced() -> None:
    """Everything the handshake recorded is announced (the backlog and
    PROCESSING_READY included) before the socket closes at its token's exp."""
    world = World()
    live(world, world.token(), cid="c-0")  # history, so the next socket reads a backlog
    socket = Socket(world, "c-1", "s-1")
    socket.hold_reads = True
    socket.upgrade(world.token(ttl=100))
    assert socket.protocol.state == "SERVICES_READY"
    socket.tick(end_of(socket))
    assert socket.closed is None  # the handshake is announced first
    socket.release_reads()
    socket.tick(socket.now)  # the deadline asked for again, already passed
    assert socket.closed == EXPIRED
    assert world.connection_states("c-1")[-2:] == ["PROCESSING_READY", "CLOSED"]
    kinds = socket.kinds()
    assert kinds.index(("state", "PROCESSING_READY")) < kinds.index(("state", "CLOSED"))
    assert of_type(socket, "token_expiring") == []


def test_a_token_that_expires_while_its_handshake_commits_is_announced_then_closed() -> None:
    world = World()
    socket = Socket(world, "c-1", "s-1")
    socket.hold_records = True
    socket.upgrade(world.token(ttl=100))
    socket.tick(end_of(socket))  # the timer fires while the commit is in flight
    assert socket.closed is None
    socket.release_records()
    socket.tick(socket.now)
    assert socket.closed == EXPIRED
    assert [kind for kind in socket.kinds() if kind[0] != "event"] == [
        ("welcome", "ACCEPTED"),
        ("state", "AUTHENTICATED"),
        ("state", "SERVICES_READY"),
        ("state", "PROCESSING_READY"),
        ("state", "CLOSED"),
    ]
    assert world.connection_states("c-1") == [*LIFECYCLE, "CLOSED"]


def test_a_refresh_recorded_while_the_old_token_expires_holds() -> None:
    """A refresh sent before exp and committed as the timer fires is answered
    and honoured, not recorded and then ignored."""
    world = World()
    socket = live(world, world.token(ttl=100))
    end = end_of(socket)
    socket.hold_records = True
    socket.send({"type": "auth", "token": world.token(ttl=3600), "ref": "r"})
    socket.tick(end)
    assert socket.closed is None
    socket.release_records()
    socket.tick(end + 1)
    assert socket.closed is None
    assert [f["exp"] for f in of_type(socket, "token")] == [socket.protocol.expiry.exp]
    assert [kind for kind, _ in connection_events(world, "c-1")][-1] == "TokenRefreshed"


def past_exp(monkeypatch: pytest.MonkeyPatch, socket: Socket) -> None:
    """The writer's wall clock past the socket's token's exp (its own clock not)."""
    exp = socket.protocol.expiry.exp
    assert exp is not None
    monkeypatch.setattr(commands.time, "time", lambda: exp + 0.001)


def test_a_handshake_the_writer_reaches_after_exp_records_nothing_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World()
    socket = Socket(world, "c-1", "s-1").upgrade()
    socket.hold_records = True
    socket.send({"type": "auth", "token": world.token(ttl=100)})
    past_exp(monkeypatch, socket)
    socket.release_records()
    assert socket.closed == EXPIRED
    assert world.connection_states("c-1") == ["CONNECTING", "ACCEPTED", "CLOSED"]
    assert world.session_events("s-1") == []
    assert socket.kinds() == [("welcome", "ACCEPTED"), ("state", "CLOSED")]


def test_a_message_or_refresh_the_writer_reaches_after_exp_is_not_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World()
    talker = live(world, world.token(ttl=100))
    refresher = live(world, world.token(ttl=100), cid="c-2", sid="s-2")
    past_exp(monkeypatch, talker)
    talker.send({"type": "message", "content": "too late", "ref": "m"})
    assert talker.closed == EXPIRED
    assert "MessageRecorded" not in [e["type"] for e in world.session_events("s-1")]
    refresher.send({"type": "auth", "token": world.token(ttl=3600)})
    assert refresher.closed == EXPIRED
    assert "TokenRefreshed" not in [kind for kind, _ in connection_events(world, "c-2")]


def test_the_writer_refuses_a_sockets_step_at_or_after_its_tokens_exp() -> None:
    commands.within_token(None)
    commands.within_token(time.time() + 60)
    with pytest.raises(TokenExpired):
        commands.within_token(time.time())
