"""Every session event has a read side (projections/sessions.py): a fold
into the session view and a line in the replay timeline; and a wire shape of
its own, where its entry gives one, is what every path shows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from domain.base import Aggregate
from domain.session import Session
from projections.sessions import SESSION_EVENTS, fold_session, timeline
from service.storage import wire
from service.storage.store import stored_row
from service.storage.wire import wire_event, wire_from_row4, wire_from_rows4


def session_event_classes() -> list[type[Aggregate.Event]]:
    """The event classes nested in Session, found by looking, not listed
    (leaving out ``Event`` and ``Created``, the bases eventsourcing gives
    every aggregate a copy of)."""
    return [
        value
        for name, value in vars(Session).items()
        if isinstance(value, type)
        and issubclass(value, Aggregate.Event)
        and not hasattr(Aggregate, name)
    ]


def test_every_session_event_class_has_a_fold_and_a_timeline_line() -> None:
    classes = session_event_classes()
    assert len(classes) >= 9, "Session's events were not found"
    for cls in classes:
        entry = SESSION_EVENTS.get(cls.wire_name({}))
        assert entry is not None, f"Session.{cls.__name__} has no entry in SESSION_EVENTS"
        assert entry.event is cls, f"{cls.__name__}'s entry is for {entry.event}"
        assert callable(entry.fold), f"Session.{cls.__name__} has no fold"
        assert callable(entry.timeline), f"Session.{cls.__name__} has no timeline line"
    # And no entry outlives its event class.
    assert {entry.event for entry in SESSION_EVENTS.values()} == set(classes)


def test_an_event_type_with_no_entry_still_has_a_line() -> None:
    """A newer node's event type; its fold (only position and updated_at move)
    is checked in tests/integration/test_projections.py."""
    newer = {"session_id": "s1", "position": 2, "type": "SessionArchived", "at": "", "data": {}}
    assert timeline({**newer, "data": {"by": "ops", "until": 3}}) == "by=ops until=3"
    assert fold_session(None, newer) is None


@pytest.fixture
def hidden_content(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """MessageRecorded's entry, given a wire shape that hides the content."""

    def hide(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "data": {**event["data"], "content": "(hidden)"}}

    entry = SESSION_EVENTS["MessageRecorded"]
    monkeypatch.setitem(SESSION_EVENTS, "MessageRecorded", dataclasses.replace(entry, wire=hide))
    # The wire module remembers each class's shape; forget it on the way in and out.
    caches: list[Any] = [wire._shape, wire._namer]
    for cache in caches:
        cache.cache_clear()
    yield
    monkeypatch.undo()
    for cache in caches:
        cache.cache_clear()


def a_session_with_a_message() -> Session:
    session = Session.create("s-wire", "alice")
    session.record_message(message_id="m", role="user", content="secret", user_id="alice")
    return session


@pytest.mark.usefixtures("hidden_content")
def test_a_wire_shape_of_its_own_is_shown_from_events_and_from_stored_rows() -> None:
    events = a_session_with_a_message().collect_events()
    rows = [stored_row(event) for event in events]
    assert wire_from_rows4(rows) == [wire_from_row4(row) for row in rows]  # the batch path
    for event in events:
        assert isinstance(event, Aggregate.Event)
        shown = wire_event(event)
        assert wire_from_row4(stored_row(event)) == shown
        if shown["type"] == "MessageRecorded":
            assert shown["data"]["content"] == "(hidden)"
        else:
            assert shown["data"] == event.payload()
