"""Random sequences of lifecycle commands: what is recorded replays to the
same connection (at the end and at every version on the way), refusals change
nothing, the walk never skips a state, and replay runs no machine callback."""

from __future__ import annotations

from typing import Any, ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from domain.base import Aggregate
from domain.connection import Connection
from domain.errors import InvalidTransition
from domain.lifecycle import ConnectionLifecycle

TRANSITIONS = ["accept", "authenticate", "attach", "go_live", "close"]
# "drain" is not a transition of this lifecycle: it must be refused like any other.
ATTEMPTS = [*TRANSITIONS, "drain"]
DETAILS: dict[str, dict[str, Any]] = {
    "accept": {},
    "authenticate": {"user_id": "alice", "roles": ["user"]},
    "attach": {"session_id": "s-1", "superseded": []},
    "go_live": {"position": 3},
    "close": {"code": 1000, "reason": "normal"},
    "drain": {},
}
# The reference model, from PROTOCOL.md: state -> {transition: target}.
WALK = ["CONNECTING", "ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"]
NEXT: dict[str, dict[str, str]] = {
    "CONNECTING": {"accept": "ACCEPTED", "close": "CLOSED"},
    "ACCEPTED": {"authenticate": "AUTHENTICATED", "close": "CLOSED"},
    "AUTHENTICATED": {"attach": "SERVICES_READY", "close": "CLOSED"},
    "SERVICES_READY": {"go_live": "PROCESSING_READY", "close": "CLOSED"},
    "PROCESSING_READY": {"close": "CLOSED"},
    "CLOSED": {},
}
# What a refusal may change in a view: its position and its update time.
MOVES_ON_REFUSAL = ("position", "updated_at")


class CountingLifecycle(ConnectionLifecycle):
    """The stock lifecycle plus an entry callback that counts its calls."""

    entered: ClassVar[int] = 0

    def on_enter_ACCEPTED(self) -> None:
        type(self).entered += 1


class CountingConnection(Connection):
    """A Connection that names the counting lifecycle (ADR 0003's extension point)."""

    lifecycle = CountingLifecycle


def replay(events: list[Aggregate.Event]) -> Any:
    aggregate: Any = None
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def without_moves(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k not in MOVES_ON_REFUSAL}


def drive(c: Connection, attempts: list[str]) -> list[dict[str, Any]]:
    """Send each attempt; check each refusal changed nothing; return the
    connection's view after every recorded event (index = version - 1)."""
    views = [c.view()]
    for name in attempts:
        state_before, view_before, version_before = c.state, c.view(), c.version
        try:
            c.transition(name, **DETAILS[name])
        except InvalidTransition as refused:
            assert refused.state == state_before and refused.transition == name
            assert c.state == state_before
            assert without_moves(c.view()) == without_moves(view_before)
        assert c.version == version_before + 1, "every attempt is one event"
        views.append(c.view())
    return views


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ATTEMPTS), max_size=14))
def test_recorded_events_replay_to_the_same_connection_and_refusals_change_nothing(
    attempts: list[str],
) -> None:
    c = Connection.open("prop-1", "s-1", node="n", proposed=True)
    views = drive(c, attempts)
    events = list(c.collect_events())

    replayed = replay(events)
    assert type(replayed) is Connection
    assert replayed.state == c.state
    assert replayed.version == c.version == len(events) == len(attempts) + 1
    assert replayed.refused == c.refused
    assert replayed.view() == c.view()
    # Every version on the way replays to the view the connection had then.
    for version in range(1, len(events) + 1):
        assert replay(events[:version]).view() == views[version - 1]

    # Whatever was attempted, what was recorded follows the walk.
    states = [e.type_name() for e in events if e.type_name() != "TransitionRefused"]
    walked = [s for s in states if s != "CLOSED"]
    assert walked == WALK[: len(walked)], "no state is ever skipped or repeated"
    assert "CLOSED" not in states[:-1], "nothing follows CLOSED"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(ATTEMPTS), max_size=14))
def test_replay_never_runs_a_callback_of_the_lifecycle(attempts: list[str]) -> None:
    c = CountingConnection.open("prop-cb", "s-1", node="n", proposed=True)
    drive(c, attempts)
    events = list(c.collect_events())

    calls_before = CountingLifecycle.entered
    replayed = replay(events)
    assert CountingLifecycle.entered == calls_before, "replay ran on_enter_ACCEPTED"
    assert type(replayed) is CountingConnection
    assert replayed.view() == c.view()


def test_a_connection_that_passed_accepted_replays_there_without_the_callback() -> None:
    c = CountingConnection.open("cb-1", "s-1", node="n", proposed=True)
    c.accept()
    c.authenticate(user_id="alice", roles=["user"])
    events = list(c.collect_events())
    assert [e.type_name() for e in events] == ["CONNECTING", "ACCEPTED", "AUTHENTICATED"]

    calls_before = CountingLifecycle.entered
    for _ in range(3):
        replayed = replay(events)
        assert replayed.state == "AUTHENTICATED"
    assert CountingLifecycle.entered == calls_before

    # The counter does count: the machine itself, sent "accept", runs the callback.
    CountingLifecycle().send("accept")
    assert CountingLifecycle.entered == calls_before + 1


def test_the_stock_lifecycle_has_no_callbacks_to_run_twice() -> None:
    names = {n for n in vars(ConnectionLifecycle) if n.startswith(("on_", "before_", "after_"))}
    assert names == set()


class LifecycleAgainstTheProtocol(RuleBasedStateMachine):
    """Each step: the connection and a plain reference table agree, and the
    log so far replays to the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.connection = Connection.open("stateful-1", "s-1", node="n", proposed=True)
        self.expected = "CONNECTING"
        self.events: list[Aggregate.Event] = list(self.connection.collect_events())
        self.refusals = 0

    @rule(name=st.sampled_from(ATTEMPTS))
    def attempt(self, name: str) -> None:
        target = NEXT[self.expected].get(name)
        try:
            got = self.connection.transition(name, **DETAILS[name])
        except InvalidTransition:
            assert target is None, f"{name} from {self.expected} should be allowed"
            self.refusals += 1
        else:
            assert got == target, f"{name} from {self.expected} should be refused"
            self.expected = target
        new = list(self.connection.collect_events())
        assert len(new) == 1
        self.events.extend(new)

    @precondition(lambda self: self.expected != "CLOSED")
    @rule()
    def close_is_always_possible_before_closed(self) -> None:
        assert self.connection.close(code=1001, reason="going away") == "CLOSED"
        self.expected = "CLOSED"
        self.events.extend(self.connection.collect_events())

    @invariant()
    def the_state_is_the_reference_state(self) -> None:
        assert self.connection.state == self.expected
        assert self.connection.refused == self.refusals

    @invariant()
    def the_log_replays_to_the_connection(self) -> None:
        replayed = replay(self.events)
        assert replayed.version == self.connection.version == len(self.events)
        assert replayed.view() == self.connection.view()


LifecycleAgainstTheProtocol.TestCase.settings = settings(
    max_examples=100, stateful_step_count=20, deadline=None
)
TestLifecycleAgainstTheProtocol = LifecycleAgainstTheProtocol.TestCase
