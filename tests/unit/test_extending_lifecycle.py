"""ADR 0003's walk-through, run: a DRAINING state between PROCESSING_READY and
CLOSED (the server asks clients to move before a deploy), in the aggregate and
then on a socket, through the connection protocol.

The test swaps the machine class the way editing domain/lifecycle.py would,
then checks: the new state is reachable only where the machine says, each
transition is one event, logs written before the state existed replay
unchanged, and the projection shows a state it was never taught.
"""

from __future__ import annotations

from typing import Any

import pytest
from statemachine import State, StateMachine

from domain.base import Aggregate
from domain.connection import Connection
from domain.errors import InvalidTransition
from domain.lifecycle import mermaid
from projections.connections import fold_connection
from service.application import commands
from service.edge.effects import Close, Effects, Outcome, Record, Recorded
from service.edge.protocol import ConnectionProtocol
from service.storage.wire import wire_event
from tests.unit.protocol_world import Socket, World


class DrainingLifecycle(StateMachine):
    """ConnectionLifecycle with step 1 of the walk-through applied."""

    CONNECTING = State("Connecting", value="CONNECTING", initial=True)
    ACCEPTED = State("Accepted", value="ACCEPTED")
    AUTHENTICATED = State("Authenticated", value="AUTHENTICATED")
    SERVICES_READY = State("Services ready", value="SERVICES_READY")
    PROCESSING_READY = State("Processing ready", value="PROCESSING_READY")
    DRAINING = State("Draining", value="DRAINING")
    CLOSED = State("Closed", value="CLOSED", final=True)

    accept = CONNECTING.to(ACCEPTED)
    authenticate = ACCEPTED.to(AUTHENTICATED)
    attach = AUTHENTICATED.to(SERVICES_READY)
    go_live = SERVICES_READY.to(PROCESSING_READY)
    drain = PROCESSING_READY.to(DRAINING)
    close = (
        CONNECTING.to(CLOSED)
        | ACCEPTED.to(CLOSED)
        | AUTHENTICATED.to(CLOSED)
        | SERVICES_READY.to(CLOSED)
        | PROCESSING_READY.to(CLOSED)
        | DRAINING.to(CLOSED)
    )


def replay(events: list[Aggregate.Event]) -> Connection:
    aggregate: Any = None
    for event in events:
        aggregate = event.mutate(aggregate)
    assert isinstance(aggregate, Connection)
    return aggregate


def walk_to_live(connection_id: str) -> Connection:
    c = Connection.open(connection_id, "s-1", node="n1", proposed=True)
    c.accept()
    c.authenticate(user_id="alice", roles=["user"])
    c.attach(session_id="s-1", superseded=[])
    c.go_live(position=2)
    return c


def test_a_draining_state_can_be_added_by_editing_the_machine_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = walk_to_live("before-deploy")
    old.close(code=1000, reason="normal")
    old_events = list(old.collect_events())

    monkeypatch.setattr(Connection, "lifecycle", DrainingLifecycle)

    # Logs written before DRAINING existed replay to the same connection.
    replayed = replay(old_events)
    assert replayed.view() == old.view()

    # The new state is reachable where the machine says, and only there.
    c = walk_to_live("after-deploy")
    assert c.transition("drain") == "DRAINING"
    assert c.transition("close", code=1001, reason="drained") == "CLOSED"
    early = Connection.open("too-early", "s-1", node="n1", proposed=True)
    early.accept()
    with pytest.raises(InvalidTransition):
        early.transition("drain")
    assert early.state == "ACCEPTED"

    events = list(c.collect_events())
    assert [e.type_name() for e in events] == [
        "CONNECTING",
        "ACCEPTED",
        "AUTHENTICATED",
        "SERVICES_READY",
        "PROCESSING_READY",
        "DRAINING",
        "CLOSED",
    ]
    assert replay(events).view() == c.view()

    # The projection, which knows nothing of DRAINING, shows it as recorded.
    row = None
    states = []
    for event in events:
        row = fold_connection(row, wire_event(event))
        assert row is not None
        states.append(row["state"])
    assert "DRAINING" in states
    assert row is not None and row["state"] == "CLOSED" and row["close_code"] == 1001

    assert "DRAINING" in mermaid(DrainingLifecycle)


class DrainingProtocol(ConnectionProtocol):
    """Step 3 of the walk-through, the protocol's part: a ``drain`` input that
    records DRAINING and announces it; messages are refused in it for free
    (they are taken in PROCESSING_READY only), and the end is the usual one."""

    def drain(self) -> Effects:
        if self.state != self.live_state or self.ending is not None:
            return []

        def then(outcome: Outcome) -> Effects:
            if not isinstance(outcome, Recorded):
                return self.end(Close.GOING_AWAY, "drained")
            self.state = outcome.value
            return [self._announce(session_id=self.session_id)]

        return [Record(commands.transition(self.connection_id, "drain"), then)]


def test_a_socket_walks_through_an_added_draining_state_at_the_protocol_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Connection, "lifecycle", DrainingLifecycle)
    world = World()
    socket = Socket(world, "c-drain", "s-drain", protocol=DrainingProtocol).upgrade()
    socket.send({"type": "auth", "token": world.token()})
    protocol = socket.protocol
    assert isinstance(protocol, DrainingProtocol)
    assert protocol.state == "PROCESSING_READY"

    socket.run(protocol.drain())
    assert socket.frames[-1] == {
        "type": "state",
        "connection_id": "c-drain",
        "state": "DRAINING",
        "session_id": "s-drain",
    }
    socket.send({"type": "message", "content": "late", "ref": "r-late"})
    assert socket.errors()[-1]["code"] == "not_ready"
    assert socket.protocol.drain() == []  # only from PROCESSING_READY

    socket.run(protocol.end(Close.GOING_AWAY, "drained"))
    assert socket.closed == (Close.GOING_AWAY, "drained")
    assert world.connection_states("c-drain") == [
        "CONNECTING",
        "ACCEPTED",
        "AUTHENTICATED",
        "SERVICES_READY",
        "PROCESSING_READY",
        "DRAINING",
        "CLOSED",
    ]
