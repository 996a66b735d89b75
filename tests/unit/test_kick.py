"""Kick and end through the log: a socket that reads its own detach in its
session's events closes 4403 with the detach's reason and records that
CLOSED; the kick command's refusals record nothing (tests/unit/protocol_world.py)."""

from __future__ import annotations

import pytest

from domain.ids import connection_stream
from service.application import commands
from service.application.auth import Principal
from service.edge.effects import Close
from tests.unit.protocol_world import Socket, World
from tests.unit.test_protocol import live_socket

ALICE = Principal("alice", frozenset({"user"}))
WORKER = Principal("worker-1", frozenset({"service"}))


def recorded_close(world: World, connection_id: str) -> tuple[int, str]:
    """The code and reason of the connection's recorded CLOSED."""
    stream = connection_stream(connection_id)
    (closed,) = [
        e for e in world.log if e.originator_id == stream and getattr(e, "state", "") == "CLOSED"
    ]
    details = closed.details  # type: ignore[attr-defined]
    return details["code"], details["reason"]


def closed_frame(connection_id: str, reason: str) -> dict[str, object]:
    return {
        "type": "state",
        "connection_id": connection_id,
        "state": "CLOSED",
        "code": 4403,
        "reason": reason,
    }


@pytest.mark.parametrize("kicker", [ALICE, WORKER], ids=["owner", "service"])
def test_a_kicked_socket_gets_its_detach_then_closed_4403_kicked_and_records_it(
    kicker: Principal,
) -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    session_id, position, kicked = world.record(commands.kick_connection("c-1", kicker))
    world.flush()
    assert (session_id, position) == ("s-1", world.session_events("s-1")[-1]["position"])
    assert kicked
    assert socket.closed == (Close.FORBIDDEN, "kicked")
    assert socket.events()[-1]["type"] == "ConnectionDetached"
    assert socket.events()[-1]["data"]["reason"] == "kicked"
    assert socket.frames[-1] == closed_frame("c-1", "kicked")
    assert recorded_close(world, "c-1") == (4403, "kicked")
    # The socket's own close detached nothing more: the kick already had.
    detaches = [e for e in world.session_events("s-1") if e["type"] == "ConnectionDetached"]
    assert len(detaches) == 1


@pytest.mark.parametrize(
    "who",
    [
        Principal("bob", frozenset({"user"})),
        Principal("auditor-1", frozenset({"auditor"})),
        Principal("alice", frozenset({"auditor"})),
    ],
    ids=["another-user", "auditor", "owner-as-auditor"],
)
def test_only_the_owner_or_a_service_may_kick_and_a_refusal_records_nothing(
    who: Principal,
) -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    before = len(world.log)
    outcome = world.execute(commands.kick_connection("c-1", who))
    assert getattr(outcome, "error", None) is not None
    assert outcome.error.code == "forbidden"  # type: ignore[union-attr]
    assert len(world.log) == before
    world.flush()
    assert socket.closed is None


def test_kicking_a_closed_connection_records_nothing() -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    socket.run(socket.protocol.end(Close.NORMAL, "normal"))
    before = len(world.log)
    assert world.record(commands.kick_connection("c-1", ALICE)) == ("s-1", None, False)
    assert len(world.log) == before


def test_a_connection_still_in_its_handshake_is_kicked_by_recording_its_close() -> None:
    """Not attached yet, it is in no session's list: its CLOSED (4403
    kicked) is recorded, the session is untouched, and the socket ends as
    recorded at its next step, with nothing more recorded of it."""
    world = World()
    live_socket(world, "c-0", "s-1")
    waiting = Socket(world, "c-1", "s-1").upgrade()  # ACCEPTED, no token yet
    session_before = world.session_events("s-1")
    assert world.record(commands.kick_connection("c-1", ALICE)) == ("s-1", None, True)
    assert world.session_events("s-1") == session_before
    assert recorded_close(world, "c-1") == (4403, "kicked")
    # Its node did not hear of it (another node's kick): its token comes.
    waiting.send({"type": "auth", "token": world.token()})
    assert waiting.closed == (Close.FORBIDDEN, "kicked")
    assert waiting.frames[-1] == closed_frame("c-1", "kicked")
    assert world.connection_states("c-1") == ["CONNECTING", "ACCEPTED", "CLOSED"]
    assert world.session_events("s-1") == session_before


def test_a_kick_racing_the_end_of_its_session_records_nothing_and_is_no_refusal() -> None:
    """The session ended (its connections detached) and the socket's node has
    not closed it yet: a kick then has nothing to do, and says so with 202
    ``kicked: false``, not that the live connection is "not attached yet"."""
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    world.execute(commands.end_session("s-1", ALICE))  # the socket is not told yet
    assert world.connection_states("c-1")[-1] == "PROCESSING_READY"
    before = len(world.log)
    assert world.record(commands.kick_connection("c-1", ALICE)) == ("s-1", None, False)
    assert len(world.log) == before
    world.flush()
    assert socket.closed == (Close.FORBIDDEN, "session_ended")


def test_an_unknown_connection_is_not_found() -> None:
    world = World()
    outcome = world.execute(commands.kick_connection("nobody", ALICE))
    assert outcome.error.code == "connection_not_found"  # type: ignore[union-attr]


def test_ending_a_session_closes_its_sockets_4403_session_ended_and_ended_is_its_last_event() -> (
    None
):
    world = World(max_connections=2)
    first = live_socket(world, "c-1", "s-1")
    second = live_socket(world, "c-2", "s-1")
    world.record(commands.end_session("s-1", ALICE))
    world.flush()
    for socket in (first, second):
        assert socket.closed == (Close.FORBIDDEN, "session_ended")
        assert socket.frames[-1] == closed_frame(socket.protocol.connection_id, "session_ended")
    events = world.session_events("s-1")
    assert events[-1]["type"] == "SessionEnded"
    detached = [e["data"] for e in events if e["type"] == "ConnectionDetached"]
    assert [(d["connection_id"], d["reason"]) for d in detached] == [
        ("c-1", "session_ended"),
        ("c-2", "session_ended"),
    ]
    # Their CLOSED came after, and added nothing to the ended session.
    assert recorded_close(world, "c-1") == (4403, "session_ended")
    assert recorded_close(world, "c-2") == (4403, "session_ended")
