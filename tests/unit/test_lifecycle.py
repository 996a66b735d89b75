"""The lifecycle table: what may follow what, and that a refusal changes nothing.

The expected table is written out here from PROTOCOL.md, not derived from the
class, so the class is checked against the contract rather than against itself.
"""

from __future__ import annotations

from typing import Any

import pytest

from domain.connection import Connection
from domain.errors import InvalidTransition, NotLive, TokenForAnotherUser
from domain.lifecycle import (
    ConnectionLifecycle,
    consult,
    final_states,
    initial_state,
    mermaid,
    state_values,
    transition_names,
)

STATES = ["CONNECTING", "ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"]
ALL_STATES = [*STATES, "CLOSED"]
TRANSITIONS = ["accept", "authenticate", "attach", "go_live", "close"]

# PROTOCOL.md: the walk in order, and CLOSED from any of the five.
ALLOWED: dict[tuple[str, str], str] = {
    ("CONNECTING", "accept"): "ACCEPTED",
    ("ACCEPTED", "authenticate"): "AUTHENTICATED",
    ("AUTHENTICATED", "attach"): "SERVICES_READY",
    ("SERVICES_READY", "go_live"): "PROCESSING_READY",
    **{(state, "close"): "CLOSED" for state in STATES},
}
ILLEGAL = [(s, t) for s in ALL_STATES for t in TRANSITIONS if (s, t) not in ALLOWED]

DETAILS: dict[str, dict[str, Any]] = {
    "accept": {},
    "authenticate": {"user_id": "alice", "roles": ["user"]},
    "attach": {"session_id": "s-1", "superseded": []},
    "go_live": {"position": 3},
    "close": {"code": 1000, "reason": "normal"},
}
# How to reach each state from CONNECTING by legal steps only.
PATH_TO: dict[str, list[str]] = {
    "CONNECTING": [],
    "ACCEPTED": ["accept"],
    "AUTHENTICATED": ["accept", "authenticate"],
    "SERVICES_READY": ["accept", "authenticate", "attach"],
    "PROCESSING_READY": ["accept", "authenticate", "attach", "go_live"],
    "CLOSED": ["accept", "close"],
}


def connection_in(state: str, connection_id: str = "c-1") -> Connection:
    c = Connection.open(connection_id, "s-1", node="n1", proposed=True)
    for name in PATH_TO[state]:
        c.transition(name, **DETAILS[name])
    assert c.state == state
    return c


def test_the_machine_has_the_protocol_states_in_order_with_one_start_and_one_end() -> None:
    assert state_values(ConnectionLifecycle) == ALL_STATES
    assert initial_state(ConnectionLifecycle) == "CONNECTING"
    assert final_states(ConnectionLifecycle) == {"CLOSED"}
    assert set(transition_names(ConnectionLifecycle)) == set(TRANSITIONS)


def test_the_walk_goes_through_the_five_states_in_order_and_closes_from_any() -> None:
    state = "CONNECTING"
    for transition in ["accept", "authenticate", "attach", "go_live"]:
        target = consult(ConnectionLifecycle, state, transition)
        assert target == ALLOWED[(state, transition)]
        state = target
    assert state == "PROCESSING_READY"
    for state in STATES:
        assert consult(ConnectionLifecycle, state, "close") == "CLOSED"


@pytest.mark.parametrize(("state", "transition"), sorted(ALLOWED))
def test_consult_answers_each_allowed_transition_with_its_target(
    state: str, transition: str
) -> None:
    assert consult(ConnectionLifecycle, state, transition) == ALLOWED[(state, transition)]
    # Asking twice (the second answer may be remembered) says the same.
    assert consult(ConnectionLifecycle, state, transition) == ALLOWED[(state, transition)]


@pytest.mark.parametrize(("state", "transition"), ILLEGAL)
def test_consult_refuses_every_transition_the_protocol_does_not_list(
    state: str, transition: str
) -> None:
    assert consult(ConnectionLifecycle, state, transition) is None
    assert consult(ConnectionLifecycle, state, transition) is None


@pytest.mark.parametrize("transition", ["fly", "drain", "", "CONNECTING", "send", "__init__"])
def test_consult_refuses_names_that_are_not_transitions_instead_of_crashing(
    transition: str,
) -> None:
    assert consult(ConnectionLifecycle, "CONNECTING", transition) is None


def test_consult_refuses_from_a_state_this_machine_does_not_know() -> None:
    # A log written by a newer node (ADR 0003's DRAINING) holds a state this
    # node's machine lacks: asking about it is a refusal, not a KeyError.
    assert consult(ConnectionLifecycle, "DRAINING", "close") is None


@pytest.mark.parametrize(("state", "transition"), ILLEGAL)
def test_an_illegal_transition_is_recorded_once_raises_and_leaves_the_state(
    state: str, transition: str
) -> None:
    c = connection_in(state)
    c.collect_events()
    view_before = c.view()
    version_before = c.version

    with pytest.raises(InvalidTransition) as refused:
        c.transition(transition, **DETAILS[transition])

    # The raising half: the error says what was refused, where, with its wire code.
    assert refused.value.transition == transition
    assert refused.value.state == state
    assert refused.value.code == "invalid_transition"
    # The recording half: exactly one TransitionRefused, and nothing else moved.
    events = c.collect_events()
    assert [e.type_name() for e in events] == ["TransitionRefused"]
    assert events[0].originator_version == version_before + 1
    assert events[0].payload() == {
        "transition": transition,
        "state": state,
        "reason": refused.value.message,
    }
    assert c.state == state
    assert c.refused == 1
    view_after = c.view()
    for key in ("position", "updated_at"):
        view_before.pop(key)
        view_after.pop(key)
    assert view_after == view_before


@pytest.mark.parametrize(("state", "transition"), sorted(ALLOWED))
def test_an_allowed_transition_records_one_event_named_after_the_state_it_enters(
    state: str, transition: str
) -> None:
    c = connection_in(state)
    c.collect_events()
    assert c.transition(transition, **DETAILS[transition]) == ALLOWED[(state, transition)]
    events = c.collect_events()
    assert [e.type_name() for e in events] == [ALLOWED[(state, transition)]]
    assert c.state == ALLOWED[(state, transition)]
    assert c.refused == 0


def test_an_unknown_transition_name_on_a_connection_is_a_recorded_refusal() -> None:
    c = connection_in("ACCEPTED")
    c.collect_events()
    with pytest.raises(InvalidTransition):
        c.transition("send")
    assert [e.type_name() for e in c.collect_events()] == ["TransitionRefused"]
    assert c.state == "ACCEPTED"


def test_the_state_incident_3_hit_is_refused_connecting_to_services_ready() -> None:
    c = Connection.open("c-2", "s-1", node="n", proposed=True)
    with pytest.raises(InvalidTransition):
        c.attach(session_id="s-1", superseded=[])
    assert c.state == "CONNECTING"
    assert [e.type_name() for e in c.collect_events()] == ["CONNECTING", "TransitionRefused"]


def test_the_command_methods_carry_their_details_into_the_connection() -> None:
    c = Connection.open("c-5", "s-1", node="n1", proposed=False)
    c.accept()
    c.authenticate(user_id="alice", roles=["user", "service"])
    c.attach(session_id="s-1", superseded=["old-tab"])
    c.go_live(position=7)
    assert (c.user_id, c.roles, c.live_position) == ("alice", ["user", "service"], 7)
    assert not c.is_closed and c.closed_at is None
    c.close(code=4409, reason="superseded")
    view = c.view()
    assert (view["state"], view["close_code"], view["close_reason"]) == (
        "CLOSED",
        4409,
        "superseded",
    )
    assert c.is_closed and view["closed_at"] == c.modified_on
    assert [e.type_name() for e in c.collect_events()] == [
        "CONNECTING",
        "ACCEPTED",
        "AUTHENTICATED",
        "SERVICES_READY",
        "PROCESSING_READY",
        "CLOSED",
    ]


def test_a_token_refresh_is_recorded_on_a_live_connection_and_leaves_its_state() -> None:
    c = connection_in("PROCESSING_READY")
    c.collect_events()
    c.refresh_token(user_id="alice", roles=["user", "service"], exp=2_000_000_000)
    [event] = c.collect_events()
    assert event.type_name() == "TokenRefreshed"
    assert event.payload() == {
        "user_id": "alice",
        "roles": ["user", "service"],
        "exp": 2_000_000_000,
    }
    assert (c.state, c.roles, c.refused) == ("PROCESSING_READY", ["user", "service"], 0)


@pytest.mark.parametrize("state", [s for s in ALL_STATES if s != "PROCESSING_READY"])
def test_a_token_refresh_is_refused_unless_live_and_records_nothing(state: str) -> None:
    c = connection_in(state)
    c.collect_events()
    with pytest.raises(NotLive) as refused:
        c.refresh_token(user_id="alice", roles=["user"], exp=2_000_000_000)
    assert refused.value.code == "not_ready"
    assert c.collect_events() == [] and c.state == state


def test_a_token_refresh_for_another_user_is_refused_and_records_nothing() -> None:
    c = connection_in("PROCESSING_READY")
    c.collect_events()
    with pytest.raises(TokenForAnotherUser) as refused:
        c.refresh_token(user_id="bob", roles=["user"], exp=2_000_000_000)
    assert refused.value.code == "forbidden"
    assert c.collect_events() == [] and c.user_id == "alice"


def test_a_closed_connection_refuses_everything_and_new_ones_still_walk() -> None:
    first = Connection.open("c-3", "s-1", node="n", proposed=True)
    first.close(code=1000, reason="normal")
    for transition in TRANSITIONS:
        with pytest.raises(InvalidTransition):
            first.transition(transition, **DETAILS[transition])
    assert first.state == "CLOSED" and first.refused == len(TRANSITIONS)
    # A machine that reached CLOSED must not poison the next connection.
    second = Connection.open("c-4", "s-1", node="n", proposed=True)
    assert second.accept() == "ACCEPTED"


def test_the_diagram_is_rendered_from_the_class_with_every_state_and_edge() -> None:
    diagram = mermaid()
    assert diagram == f"{ConnectionLifecycle:mermaid}"
    assert diagram.startswith("stateDiagram-v2")
    lines = [line.strip() for line in diagram.splitlines()]
    for state in ALL_STATES:
        assert any(line.endswith(f" as {state}") for line in lines), state
    assert "[*] --> CONNECTING" in lines
    assert "CLOSED --> [*]" in lines
    edges = {line.split(" : ")[0] for line in lines if " --> " in line and "[*]" not in line}
    assert edges == {f"{state} --> {target}" for (state, _), target in ALLOWED.items()}
