"""The connection protocol on its own: whole handshakes, refusals, supersede,
bad-frame floods and slow consumers, without a socket (tests/unit/protocol_world.py).
"""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

import service.edge.effects
import service.edge.expiry
import service.edge.protocol
from service.application import commands
from service.application.budgets import Budgets, SocketAdmission
from service.application.hub import EventFrame
from service.edge.effects import Close, Closing, ReadEvents, Record
from service.edge.frames import BAD_FRAME_WINDOW
from service.runtime.settings import Rate, Settings
from tests.unit.protocol_world import SECRET, Socket, World

LIVE = [("welcome", "ACCEPTED"), ("state", "AUTHENTICATED"), ("state", "SERVICES_READY")]
LIFECYCLE = ["CONNECTING", "ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"]


def live_socket(world: World, cid: str, sid: str, user: str = "alice", **kw: Any) -> Socket:
    socket = Socket(world, cid, sid, **kw).upgrade()
    socket.send({"type": "auth", "token": world.token(user)})
    assert socket.protocol.state == "PROCESSING_READY", socket.frames
    return socket


def test_a_handshake_with_an_auth_frame_walks_every_state_and_sends_the_backlog_between() -> None:
    world = World()
    creator = Socket(world, "c-0", "s-1").upgrade(world.token())
    creator.run(creator.protocol.end(Close.NORMAL, "normal"))
    socket = Socket(world, "c-1", "s-1").upgrade()
    assert socket.kinds() == [("welcome", "ACCEPTED")]
    assert socket.frames[0]["connection_id"] == "c-1"

    socket.send({"type": "auth", "token": world.token()})

    assert socket.kinds() == [
        *LIVE,
        *[("event", None)] * 4,
        ("state", "PROCESSING_READY"),
    ]
    assert [e["type"] for e in socket.events()] == [
        "SessionCreated",
        "ConnectionAttached",
        "ConnectionDetached",
        "ConnectionAttached",
    ]
    assert [e["position"] for e in socket.events()] == [1, 2, 3, 4]
    assert socket.frames[-1]["position"] == 4 and socket.frames[-1]["session_id"] == "s-1"
    assert world.connection_states("c-1") == LIFECYCLE


def test_an_auth_frame_handshake_is_two_commits_before_closed() -> None:
    world = World()
    socket = Socket(world, "c-1", "s-1").upgrade()
    assert world.commits_of("c-1") == [["CONNECTING", "ACCEPTED"]]
    socket.send({"type": "auth", "token": world.token()})
    assert socket.protocol.state == "PROCESSING_READY"
    socket.run(socket.protocol.socket_closed(1000, timed_out=False))
    assert world.commits_of("c-1") == [
        ["CONNECTING", "ACCEPTED"],
        ["AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"],
        ["CLOSED"],
    ]
    assert world.commands == [
        "open_connection+accept",
        "authenticate+attach+go_live",
        "close_connection",
    ]
    # The session's side of the attach is in the second commit too.
    session = [kind for stream, kind in world.commits[1] if stream == "session:s-1"]
    assert session == ["SessionCreated", "ConnectionAttached"]


def test_a_token_in_the_upgrade_records_the_whole_handshake_in_one_commit() -> None:
    world = World()
    socket = Socket(world, "c-1", "s-1").upgrade(world.token())
    assert socket.kinds() == [
        *LIVE,
        ("event", None),
        ("event", None),
        ("state", "PROCESSING_READY"),
    ]
    socket.run(socket.protocol.end(Close.GOING_AWAY, "server_shutdown"))
    assert world.commands == [
        "open_connection+accept+authenticate+attach+go_live",
        "close_connection",
    ]
    assert world.commits_of("c-1") == [LIFECYCLE, ["CLOSED"]]


def test_processing_ready_carries_the_position_the_backlog_ends_at_and_live_events_follow_it() -> (
    None
):
    world = World(max_connections=2)
    first = live_socket(world, "c-0", "s-1")
    socket = Socket(world, "c-1", "s-1")
    socket.hold_reads = True  # the backlog read is slow: a message is recorded meanwhile
    socket.upgrade(world.token())
    assert first.protocol.principal is not None
    world.record(
        commands.record_message(
            "s-1", first.protocol.principal, message_id="m", content="x", role="user"
        )
    )
    socket.release_reads()
    live = socket.frames.index(
        next(f for f in socket.frames if f.get("state") == "PROCESSING_READY")
    )
    recorded = world.aggregates["connection:c-1"].live_position  # type: ignore[attr-defined]
    assert socket.frames[live]["position"] == recorded == 3
    before = [f["event"]["position"] for f in socket.frames[:live] if f["type"] == "event"]
    after = [f["event"]["position"] for f in socket.frames[live:] if f["type"] == "event"]
    assert (before, after) == ([1, 2, 3], [4])
    assert socket.events()[-1]["type"] == "MessageRecorded"


def test_the_store_down_at_the_first_commit_closes_1013_with_nothing_recorded_or_announced() -> (
    None
):
    world = World()
    world.down = True
    socket = Socket(world, "c-1", "s-1").upgrade()
    assert socket.closed == (Close.TRY_AGAIN_LATER, "store_unavailable")
    assert socket.frames == []  # no welcome, no CLOSED: nothing was recorded
    world.back()
    assert world.connection_states("c-1") == []
    assert world.owed == []


def test_the_store_down_under_a_header_tokens_handshake_closes_1013_with_nothing_recorded() -> None:
    world = World()
    world.down = True
    socket = Socket(world, "c-1", "s-1").upgrade(world.token())
    assert socket.closed == (Close.TRY_AGAIN_LATER, "store_unavailable")
    assert socket.frames == []
    world.back()
    assert world.connection_states("c-1") == [] and world.session_events("s-1") == []


def test_an_id_taken_between_the_lookup_and_the_first_commit_closes_4400_recording_nothing() -> (
    None
):
    world = World()
    other = live_socket(world, "c-1", "s-other")
    before = world.connection_states("c-1")
    late = Socket(world, "c-1", "s-1").upgrade(world.token())
    assert late.closed == (Close.PROTOCOL, "connection_id_taken")
    assert late.frames == []
    late.run(late.protocol.socket_closed(Close.PROTOCOL, timed_out=False))
    assert world.connection_states("c-1") == before  # the other connection's, untouched
    assert world.session_events("s-1") == []
    assert other.closed is None


def test_a_socket_closed_before_its_upgrade_records_nothing() -> None:
    world = World()
    socket = Socket(world, "c-1", "s-1")
    assert socket.protocol.upgrade_failed() == []
    assert socket.protocol.ending == (Close.ABNORMAL, "upgrade_failed")
    assert world.commands == []


@pytest.mark.parametrize("token", ["not.a.jwt", "", "expired"])
def test_a_bad_token_closes_4401_and_records_the_close(token: str) -> None:
    world = World()
    if token == "expired":
        past = int(time.time()) - 60
        token = jwt.encode({"sub": "alice", "exp": past}, SECRET, algorithm="HS256")
    socket = Socket(world, "c-bad", "s-1").upgrade()
    socket.send({"type": "auth", "token": token})
    assert socket.closed is not None and socket.closed[0] == Close.UNAUTHENTICATED
    assert socket.frames[-1]["state"] == "CLOSED" and socket.frames[-1]["code"] == 4401
    assert world.connection_states("c-bad") == ["CONNECTING", "ACCEPTED", "CLOSED"]
    assert world.session_events("s-1") == []


def test_an_auth_frame_without_a_token_string_is_unauthenticated() -> None:
    world = World()
    socket = Socket(world, "c-1", "s-1").upgrade()
    socket.send({"type": "auth", "token": 42})
    assert socket.closed is not None and socket.closed[0] == Close.UNAUTHENTICATED


def test_an_auth_frame_the_schema_refuses_closes_4401_saying_why_not_missing_token() -> None:
    """A token is there, in a frame the schema refuses (a field it does not
    have, a ref that is not a string): the close says what was wrong."""
    world = World()
    for i, frame in enumerate(
        [
            {"type": "auth", "token": world.token(), "extra": 1},
            {"type": "auth", "token": world.token(), "ref": 7},
        ]
    ):
        socket = Socket(world, f"c-{i}", "s-1").upgrade()
        socket.send(frame)
        assert socket.closed is not None
        code, reason = socket.closed
        assert code == Close.UNAUTHENTICATED
        assert reason.startswith("unauthenticated: the auth frame was refused: "), reason
        assert "missing token" not in reason


def test_no_token_before_the_deadline_closes_4401_auth_timeout() -> None:
    world = World()
    socket = Socket(world, "c-1", "s-1").upgrade()
    socket.tick(9.9)
    assert socket.closed is None
    socket.tick(10.0)
    assert socket.closed == (Close.UNAUTHENTICATED, "auth_timeout")
    assert world.connection_states("c-1") == ["CONNECTING", "ACCEPTED", "CLOSED"]


def test_another_users_session_is_refused_4403_and_nothing_is_attached() -> None:
    world = World()
    live_socket(world, "c-alice", "s-alices", "alice")
    bob = Socket(world, "c-bob", "s-alices").upgrade()
    bob.send({"type": "auth", "token": world.token("bob")})
    assert bob.closed is not None and bob.closed[0] == Close.FORBIDDEN
    assert bob.events() == []
    attached = [e for e in world.session_events("s-alices") if e["type"] == "ConnectionAttached"]
    assert [e["data"]["connection_id"] for e in attached] == ["c-alice"]


def test_a_newer_connection_supersedes_the_older_which_closes_4409() -> None:
    world = World()
    old = live_socket(world, "c-old", "s-1")
    new = live_socket(world, "c-new", "s-1")
    assert old.closed == (Close.SUPERSEDED, "superseded")
    assert old.frames[-1] == {
        "type": "state",
        "connection_id": "c-old",
        "state": "CLOSED",
        "code": 4409,
        "reason": "superseded",
    }
    assert new.closed is None
    assert world.connection_states("c-old")[-1] == "CLOSED"
    superseded = new.frames[2]
    assert superseded["state"] == "SERVICES_READY" and superseded["superseded"] == ["c-old"]


def test_a_socket_whose_after_is_past_the_sessions_end_is_still_superseded() -> None:
    """``after`` past the session's end: positions up to it are not sent (the
    client says it has seen them), but the detach that supersedes this
    connection is among them, and the socket must still end with the record."""
    world = World()
    old = live_socket(world, "c-old", "s-1", after=1000)
    assert old.frames[-1]["state"] == "PROCESSING_READY"
    assert old.events() == []
    live_socket(world, "c-new", "s-1")
    assert old.closed == (Close.SUPERSEDED, "superseded")
    assert world.connection_states("c-old")[-1] == "CLOSED"
    assert old.events() == []


def test_messages_are_refused_before_processing_ready_and_reach_every_socket_after() -> None:
    world = World(max_connections=2)
    early = Socket(world, "c-early", "s-chat").upgrade()
    early.send({"type": "message", "content": "too soon", "ref": "r-0"})
    assert early.errors()[-1]["code"] == "not_ready" and early.errors()[-1]["ref"] == "r-0"
    early.send({"type": "auth", "token": world.token()})
    other = live_socket(world, "c-other", "s-chat")

    early.send({"type": "message", "content": "hello", "message_id": "m-1", "ref": "r-1"})

    for socket in (early, other):
        message = socket.events()[-1]
        assert message["type"] == "MessageRecorded" and message["data"]["content"] == "hello"
        positions = [e["position"] for e in socket.events()]
        assert positions == list(range(positions[0], positions[-1] + 1))
    contents = [e["data"].get("content") for e in world.session_events("s-chat")]
    assert "too soon" not in contents and contents.count("hello") == 1


def test_bad_frames_get_errors_with_their_ref_and_record_nothing() -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    before = len(world.log)
    socket.send("{not json")
    socket.send({"type": "teleport", "ref": "r-unknown"})
    socket.send({"type": "message", "content": 42, "ref": "r-types"})
    socket.send({"type": "message", "content": "x", "colour": "red", "ref": "r-field"})
    socket.send({"type": "message", "content": "x", "message_id": "has space", "ref": "r-id"})
    socket.send(b"\x00binary")
    codes = [(e["code"], e.get("ref")) for e in socket.errors()]
    assert codes == [
        ("bad_frame", None),
        ("unknown_type", "r-unknown"),
        ("bad_frame", "r-types"),
        ("bad_frame", "r-field"),
        ("bad_frame", "r-id"),
        ("bad_frame", None),
    ]
    assert socket.closed is None
    assert len(world.log) == before


def test_a_flood_of_bad_frames_closes_4400_past_the_budget_but_not_spread_over_minutes() -> None:
    world = World()
    patient = live_socket(world, "c-patient", "s-1", after=0)
    for i in range(30):
        patient.tick(i * BAD_FRAME_WINDOW / 9)
        patient.send("{nope")
    assert patient.closed is None

    world2 = World()
    flood = live_socket(world2, "c-flood", "s-2")
    for _ in range(world2.limits.bad_frames_per_minute):
        flood.send("{nope")
    assert flood.closed is None
    flood.send("{nope")
    assert flood.closed == (Close.PROTOCOL, "protocol_error")
    assert world2.connection_states("c-flood")[-1] == "CLOSED"


def test_a_slow_consumer_is_closed_4408_and_recorded() -> None:
    world = World()
    socket = live_socket(world, "c-slow", "s-1")
    socket.run(socket.protocol.overflowed())
    assert socket.closed == (Close.SLOW_CONSUMER, "slow_consumer")
    assert world.connection_states("c-slow")[-1] == "CLOSED"


def budgets(**settings: Any) -> Budgets:
    return Budgets(Settings(**settings))


def test_a_message_frame_with_a_null_role_is_recorded_as_a_users() -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    socket.send({"type": "message", "content": "hi", "role": None, "ref": "r"})
    assert socket.errors() == []
    recorded = [e for e in world.session_events("s-1") if e["type"] == "MessageRecorded"]
    assert [e["data"]["role"] for e in recorded] == ["user"]


def test_message_frames_past_the_users_write_budget_close_4429_and_record_nothing() -> None:
    world = World()
    shared = budgets(user_writes=Rate(2, 60.0))
    socket = live_socket(world, "c-1", "s-1", admission=SocketAdmission(shared, "10.0.0.1"))
    for n in range(2):
        socket.send({"type": "message", "content": f"m{n}"})
    recorded = len(world.session_events("s-1"))
    socket.send({"type": "message", "content": "one too many"})
    assert socket.closed == (Close.RATE_LIMITED, "rate_limited")
    last = socket.frames[-1]
    assert (last["state"], last["code"], last["reason"]) == ("CLOSED", 4429, "rate_limited")
    session_types = [e["type"] for e in world.session_events("s-1")]
    assert len(session_types) == recorded + 1 and session_types[-1] == "ConnectionDetached"
    # The same budget as the user's HTTP writes: spent, whichever way.
    assert shared.write("alice") > 0


def test_an_auth_frame_for_a_user_with_every_live_socket_allowed_closes_4429() -> None:
    world = World(max_connections=5)
    shared = budgets(user_sockets=1)
    first = live_socket(world, "c-1", "s-1", admission=SocketAdmission(shared, "10.0.0.1"))
    second = Socket(world, "c-2", "s-2", admission=SocketAdmission(shared, "10.0.0.1")).upgrade()
    second.send({"type": "auth", "token": world.token("alice")})
    assert second.closed == (Close.RATE_LIMITED, "rate_limited")
    assert world.connection_states("c-2") == ["CONNECTING", "ACCEPTED", "CLOSED"]
    assert world.session_events("s-2") == []  # nothing attached, nothing created
    assert first.closed is None
    bob = Socket(world, "c-3", "s-3", admission=SocketAdmission(shared, "10.0.0.1")).upgrade()
    bob.send({"type": "auth", "token": world.token("bob")})
    assert bob.protocol.state == "PROCESSING_READY"


def test_an_attach_that_would_create_a_session_past_the_users_budget_closes_4429() -> None:
    world = World()
    shared = budgets(user_sessions=Rate(1, 60.0))
    live_socket(world, "c-1", "s-1", admission=SocketAdmission(shared, "10.0.0.1"))
    late = Socket(world, "c-2", "s-2", admission=SocketAdmission(shared, "10.0.0.1")).upgrade()
    late.send({"type": "auth", "token": world.token("alice")})
    assert late.closed == (Close.RATE_LIMITED, "rate_limited")
    assert world.session_events("s-2") == []
    # Joining a session that exists creates nothing, so spends nothing.
    again = Socket(world, "c-3", "s-1", admission=SocketAdmission(shared, "10.0.0.1")).upgrade()
    again.send({"type": "auth", "token": world.token("alice")})
    assert again.protocol.state == "PROCESSING_READY"


def test_a_live_event_ahead_of_the_next_position_is_held_until_the_hole_is_read() -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    last = socket.protocol.last_sent
    # Two events recorded; the hub lost the first (as a follower might).
    socket.following = False
    alice = socket.protocol.principal
    assert alice is not None
    world.record(commands.record_message("s-1", alice, message_id="a", role="user", content="a"))
    world.record(commands.record_message("s-1", alice, message_id="b", role="user", content="b"))
    second = socket.queue.pop()
    socket.queue.clear()
    effects = socket.protocol.live([second])
    assert isinstance(effects[0], ReadEvents) and effects[0].after == last
    socket.run(effects)
    assert [e["position"] for e in socket.events()][-2:] == [last + 1, last + 2]


def test_events_already_sent_are_dropped_and_each_position_goes_out_once() -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    sent = socket.events()
    effects = socket.protocol.live([EventFrame.of(event) for event in sent])
    assert effects == []


@pytest.mark.parametrize(
    ("code", "timed_out", "layer_error", "recorded"),
    [
        (1000, False, None, (1000, "normal")),
        (0, False, None, (1000, "normal")),  # a close frame with no status code
        (1001, False, None, (1001, "client_going_away")),
        (None, False, None, (1006, "dropped")),
        (1006, True, None, (1006, "timeout")),
        (1006, False, 1009, (1009, "too_large")),
        (1006, False, 1007, (1007, "invalid_utf8")),
        (1006, False, 1002, (1002, "protocol_error")),
        (4000, False, None, (4000, "client_closed")),
    ],
)
def test_a_close_the_server_did_not_decide_is_recorded_with_its_code_and_reason(
    code: int | None, timed_out: bool, layer_error: int | None, recorded: tuple[int, str]
) -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    effects = socket.protocol.socket_closed(code, timed_out=timed_out, layer_error=layer_error)
    assert [type(e) for e in effects] == [Record]
    socket.run(effects)
    connection = world.aggregates["connection:c-1"]
    assert (connection.close_code, connection.close_reason) == recorded  # type: ignore[attr-defined]
    # Said once: a later end records nothing more.
    assert socket.protocol.end(Close.GOING_AWAY, "server_shutdown") == []


def test_the_clients_close_text_is_recorded_beside_the_code_and_reason() -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    socket.run(socket.protocol.socket_closed(4000, timed_out=False, said="tab closed"))
    closed = [e for e in world.log if e.originator_id == "connection:c-1"][-1]
    assert closed.details == {  # type: ignore[attr-defined]
        "code": 4000,
        "reason": "client_closed",
        "said": "tab closed",
    }


def test_the_store_down_mid_handshake_ends_the_socket_1013_recorded_once_it_is_back() -> None:
    world = World()
    socket = Socket(world, "c-1", "s-1").upgrade()
    world.down = True
    socket.send({"type": "auth", "token": world.token()})
    assert socket.closed == (Close.TRY_AGAIN_LATER, "store_unavailable")
    assert socket.frames[-1]["state"] == "CLOSED" and socket.frames[-1]["code"] == 1013
    # Nothing of the failed commit: no AUTHENTICATED recorded, none announced.
    assert socket.kinds() == [("welcome", "ACCEPTED"), ("state", "CLOSED")]
    assert world.connection_states("c-1") == ["CONNECTING", "ACCEPTED"]
    world.back()
    assert world.connection_states("c-1")[-1] == "CLOSED"
    closed = world.aggregates["connection:c-1"]
    assert (closed.close_code, closed.close_reason) == (1013, "store_unavailable")  # type: ignore[attr-defined]


def test_a_socket_closed_while_the_store_is_down_is_recorded_closed_once_it_is_back() -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    world.down = True
    socket.run(socket.protocol.socket_closed(4321, timed_out=False))
    assert world.connection_states("c-1")[-1] == "PROCESSING_READY"
    world.back()
    closed = world.aggregates["connection:c-1"]
    assert (closed.close_code, closed.close_reason) == (4321, "client_closed")  # type: ignore[attr-defined]
    session = world.aggregates["session:s-1"]
    assert "c-1" not in session.connections  # type: ignore[attr-defined]


def test_a_hole_the_store_cannot_fill_ends_the_socket_1013_not_a_gap() -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    sent = socket.events()[-1]["position"] if socket.events() else 0
    world.down = True
    # An event two positions ahead: the one between must be read first.
    later = {**socket.events()[-1], "position": sent + 2} if socket.events() else None
    assert later is not None
    socket.run(socket.protocol.live([EventFrame.of(later)]))
    assert socket.closed == (Close.TRY_AGAIN_LATER, "store_unavailable")
    assert [e["position"] for e in socket.events()][-1] == sent


def test_a_message_when_the_store_is_down_gets_an_unavailable_error_and_the_socket_stays() -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    world.down = True
    socket.send({"type": "message", "content": "x", "ref": "r-1"})
    assert socket.errors()[-1]["code"] == "unavailable" and socket.errors()[-1]["ref"] == "r-1"
    assert socket.closed is None


def test_ending_twice_says_it_once() -> None:
    world = World()
    socket = live_socket(world, "c-1", "s-1")
    first = socket.protocol.end(Close.GOING_AWAY, "server_shutdown")
    assert [type(e) for e in first] == [Closing]
    assert socket.protocol.end(Close.NORMAL, "normal") == []
    assert socket.protocol.receive('{"type": "message", "content": "x"}', 0.0) == []


def test_a_second_auth_frame_before_processing_ready_is_a_refused_transition_recorded() -> None:
    world = World()
    live_socket(world, "c-0", "s-1")
    socket = Socket(world, "c-1", "s-1")
    socket.hold_reads = True  # the backlog read is slow: SERVICES_READY meanwhile
    socket.upgrade(world.token())
    assert socket.protocol.state == "SERVICES_READY" and socket.held_reads
    socket.send({"type": "auth", "token": world.token(), "ref": "again"})
    assert (socket.errors()[-1]["code"], socket.errors()[-1]["ref"]) == (
        "invalid_transition",
        "again",
    )
    assert world.connection_states("c-1")[-1] == "TransitionRefused"
    assert socket.closed is None
    socket.release_reads()
    assert socket.protocol.state == "PROCESSING_READY"


def test_a_second_auth_frame_while_the_first_is_checked_is_refused_and_recorded() -> None:
    """Two ``auth`` frames back to back: the second arrives before the first
    token's answer. It is refused (the lifecycle would allow an authenticate
    from ACCEPTED, the protocol does not allow two at once) and the attempt is
    recorded like any refused transition; the first goes on."""
    world = World()
    socket = Socket(world, "c-1", "s-1").upgrade()
    token = world.token()
    first = socket.protocol.receive(f'{{"type": "auth", "token": "{token}"}}', 0.0)
    second = socket.protocol.receive(f'{{"type": "auth", "token": "{token}", "ref": "a2"}}', 0.0)
    socket.run(second)
    world.flush()
    assert (socket.errors()[-1]["code"], socket.errors()[-1]["ref"]) == (
        "invalid_transition",
        "a2",
    )
    socket.run(first)
    world.flush()
    assert socket.protocol.state == "PROCESSING_READY"
    assert world.connection_states("c-1") == [
        "CONNECTING",
        "ACCEPTED",
        "TransitionRefused",
        "AUTHENTICATED",
        "SERVICES_READY",
        "PROCESSING_READY",
    ]


def test_the_protocol_imports_neither_aiohttp_nor_asyncio() -> None:
    for module in (service.edge.protocol, service.edge.effects, service.edge.expiry):
        tree = ast.parse(Path(str(module.__file__)).read_text())
        roots: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots.add((node.module or "").split(".")[0])
        assert not roots & {"aiohttp", "asyncio"}, module.__name__
