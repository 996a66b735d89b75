"""The lifecycle table: what may follow what, and that a refusal changes nothing."""

from __future__ import annotations

import pytest

from domain.connection import Connection
from domain.errors import InvalidTransition
from domain.lifecycle import (
    ConnectionLifecycle,
    consult,
    final_states,
    initial_state,
    mermaid,
    state_values,
    transition_names,
)

WALK = [
    ("accept", "ACCEPTED"),
    ("authenticate", "AUTHENTICATED"),
    ("attach", "SERVICES_READY"),
    ("go_live", "PROCESSING_READY"),
]
STATES = ["CONNECTING", "ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"]


def test_the_machine_walks_the_five_states_in_order_and_closes_from_any() -> None:
    assert state_values(ConnectionLifecycle) == [*STATES, "CLOSED"]
    assert initial_state(ConnectionLifecycle) == "CONNECTING"
    assert final_states(ConnectionLifecycle) == {"CLOSED"}
    state = "CONNECTING"
    for transition, target in WALK:
        assert consult(ConnectionLifecycle, state, transition) == target
        state = target
    for state in STATES:
        assert consult(ConnectionLifecycle, state, "close") == "CLOSED"


@pytest.mark.parametrize("state", [*STATES, "CLOSED"])
@pytest.mark.parametrize("transition", ["accept", "authenticate", "attach", "go_live", "close"])
def test_every_transition_not_in_the_table_is_refused(state: str, transition: str) -> None:
    allowed = {s: t for (t, _), s in zip(WALK, STATES, strict=False)}
    expected_ok = (allowed.get(state) == transition) or (
        transition == "close" and state != "CLOSED"
    )
    target = consult(ConnectionLifecycle, state, transition)
    assert (target is not None) == expected_ok


def test_a_refused_transition_is_recorded_raises_and_changes_nothing() -> None:
    c = Connection.open("c-1", "s-1", node="n", proposed=True)
    c.accept()
    before = (c.state, c.view()["user_id"])
    version = c.version
    with pytest.raises(InvalidTransition) as refused:
        c.go_live(position=1)  # ACCEPTED -> PROCESSING_READY skips two states
    assert refused.value.transition == "go_live" and refused.value.state == "ACCEPTED"
    assert (c.state, c.view()["user_id"]) == before
    events = c.collect_events()
    assert [e.type_name() for e in events] == ["CONNECTING", "ACCEPTED", "TransitionRefused"]
    assert events[-1].originator_version == version + 1
    assert c.refused == 1


def test_the_state_incident_3_hit_is_refused_connecting_to_services_ready() -> None:
    c = Connection.open("c-2", "s-1", node="n", proposed=True)
    with pytest.raises(InvalidTransition):
        c.attach(session_id="s-1", superseded=[])
    assert c.state == "CONNECTING"


def test_a_closed_connection_refuses_everything_and_new_ones_still_walk() -> None:
    first = Connection.open("c-3", "s-1", node="n", proposed=True)
    first.close(code=1000, reason="normal")
    for transition in ("accept", "close"):
        with pytest.raises(InvalidTransition):
            first.transition(transition)
    # A machine that reached CLOSED must not poison the next connection.
    second = Connection.open("c-4", "s-1", node="n", proposed=True)
    assert second.accept() == "ACCEPTED"


def test_the_diagram_is_rendered_from_the_class_with_every_state() -> None:
    diagram = mermaid()
    assert diagram.startswith("stateDiagram-v2")
    for state in [*STATES, "CLOSED"]:
        assert state in diagram
    assert set(transition_names(ConnectionLifecycle)) == {
        "accept",
        "authenticate",
        "attach",
        "go_live",
        "close",
    }
