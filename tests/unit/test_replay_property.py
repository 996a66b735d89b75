"""Random sequences of lifecycle commands: what is recorded replays to the
same connection, refusals change nothing, and replay runs no callbacks."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.connection import Connection
from domain.errors import InvalidTransition
from domain.lifecycle import ConnectionLifecycle

TRANSITIONS = ["accept", "authenticate", "attach", "go_live", "close"]
DETAILS: dict[str, dict[str, Any]] = {
    "accept": {},
    "authenticate": {"user_id": "alice", "roles": ["user"]},
    "attach": {"session_id": "s-1", "superseded": []},
    "go_live": {"position": 3},
    "close": {"code": 1000, "reason": "normal"},
}


def replay(events: list[Any]) -> Connection:
    aggregate: Any = None
    for event in events:
        aggregate = event.mutate(aggregate)
    assert isinstance(aggregate, Connection)
    return aggregate


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TRANSITIONS), max_size=12))
def test_recorded_events_replay_to_the_same_connection_and_refusals_change_nothing(
    commands: list[str],
) -> None:
    c = Connection.open("prop-1", "s-1", node="n", proposed=True)
    for name in commands:
        state_before = c.state
        view_before = c.view()
        try:
            c.transition(name, **DETAILS[name])
        except InvalidTransition:
            assert c.state == state_before
            after = c.view()
            for key in ("state", "user_id", "close_code", "close_reason", "closed_at"):
                assert after[key] == view_before[key]
    events = list(c.collect_events())
    replayed = replay(events)
    assert replayed.state == c.state
    assert replayed.version == c.version == len(events)
    assert replayed.view() == c.view()
    states = [e.type_name() for e in events if e.type_name() != "TransitionRefused"]
    order = ["CONNECTING", "ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"]
    walked = [s for s in states if s != "CLOSED"]
    assert walked == order[: len(walked)], "no state is ever skipped"
    assert states.count("CLOSED") <= 1 and (not states or "CLOSED" not in states[:-1])


class CountingLifecycle(ConnectionLifecycle):
    """The lifecycle with an entry callback, to prove replay never runs it."""

    entered: ClassVar[list[str]] = []

    def on_enter_ACCEPTED(self) -> None:
        type(self).entered.append("ACCEPTED")


def test_replay_restores_the_state_without_running_machine_callbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Connection, "lifecycle", CountingLifecycle)
    CountingLifecycle.entered.clear()
    c = Connection.open("cb-1", "s-1", node="n", proposed=True)
    c.accept()
    calls_while_deciding = len(CountingLifecycle.entered)
    events = list(c.collect_events())
    replayed = replay(events)
    assert replayed.state == "ACCEPTED"
    assert len(CountingLifecycle.entered) == calls_while_deciding, "replay ran a callback"


def test_the_stock_lifecycle_has_no_callbacks_to_run_twice() -> None:
    names = {n for n in vars(ConnectionLifecycle) if n.startswith(("on_", "before_", "after_"))}
    assert names == set()
