"""The Session aggregate and the ID rules, without any store."""

from __future__ import annotations

from typing import Any

import pytest

from domain.errors import (
    InvalidCommand,
    InvalidId,
    SessionEnded,
    SessionOwnedByOther,
    TaskFinished,
    TaskNotFound,
)
from domain.ids import check_id, connection_stream, id_from_stream, is_valid_id, session_stream
from domain.session import Session


def replay(events: list[Any]) -> Session:
    aggregate: Any = None
    for event in events:
        aggregate = event.mutate(aggregate)
    assert isinstance(aggregate, Session)
    return aggregate


def test_a_session_is_created_under_the_proposed_id_at_position_1() -> None:
    s = Session.create("sess_mgpresmh_6655kc3b0", "alice", {"title": "t"})
    events = s.collect_events()
    assert [e.type_name() for e in events] == ["SessionCreated"]
    assert events[0].originator_version == 1
    assert s.view()["session_id"] == "sess_mgpresmh_6655kc3b0"
    assert s.view()["state"] == "ACTIVE" and s.view()["metadata"] == {"title": "t"}


def test_a_repeated_message_id_records_nothing_and_answers_the_first_position() -> None:
    s = Session.create("s", "alice")
    assert s.record_message(message_id="m1", role="user", content="a", user_id="alice") == (2, True)
    assert s.record_message(message_id="m1", role="user", content="b", user_id="alice") == (
        2,
        False,
    )
    assert s.record_message(message_id="m2", role="assistant", content="c", user_id="alice") == (
        3,
        True,
    )
    assert [e.type_name() for e in s.collect_events()].count("MessageRecorded") == 2
    assert s.message_count == 2


def test_a_bad_role_or_negative_tokens_is_refused_before_anything_is_recorded() -> None:
    s = Session.create("s", "alice")
    s.collect_events()
    with pytest.raises(InvalidCommand):
        s.record_message(message_id="m", role="robot", content="x", user_id="alice")
    with pytest.raises(InvalidCommand):
        s.record_message(message_id="m", role="user", content="x", user_id="alice", tokens=-1)
    assert s.collect_events() == []


def test_attaching_beyond_the_limit_detaches_the_oldest_as_superseded() -> None:
    s = Session.create("s", "alice")
    assert s.attach(connection_id="tab-1", user_id="alice", node="n", max_connections=1) == []
    assert s.attach(connection_id="tab-2", user_id="alice", node="n", max_connections=1) == [
        "tab-1"
    ]
    assert s.connections == ["tab-2"]
    detached = [e for e in s.collect_events() if e.type_name() == "ConnectionDetached"]
    assert detached[0].payload() == {
        "connection_id": "tab-1",
        "reason": "superseded",
        "superseded_by": "tab-2",
    }


def test_two_live_connections_are_kept_when_the_limit_is_two() -> None:
    s = Session.create("s", "alice")
    s.attach(connection_id="a", user_id="alice", node="n", max_connections=2)
    s.attach(connection_id="b", user_id="alice", node="n", max_connections=2)
    assert s.attach(connection_id="c", user_id="alice", node="n", max_connections=2) == ["a"]
    assert s.connections == ["b", "c"]


def test_detaching_an_unattached_connection_records_nothing() -> None:
    s = Session.create("s", "alice")
    s.collect_events()
    assert s.detach(connection_id="ghost", reason="normal") is False
    assert s.collect_events() == []


def test_an_ended_session_refuses_writes_and_ending_twice_records_once() -> None:
    s = Session.create("s", "alice")
    assert s.end(user_id="alice") is True
    assert s.end(user_id="alice") is False
    with pytest.raises(SessionEnded):
        s.record_message(message_id="m", role="user", content="x", user_id="alice")
    with pytest.raises(SessionEnded):
        s.attach(connection_id="c", user_id="alice", node="n", max_connections=1)
    with pytest.raises(SessionEnded):
        s.start_task(task_id="t", name="job", total=None, user_id="alice")
    assert [e.type_name() for e in s.collect_events()].count("SessionEnded") == 1
    assert s.view()["state"] == "ENDED"


def test_tasks_start_once_progress_and_finish_once() -> None:
    s = Session.create("s", "alice")
    assert s.start_task(task_id="t1", name="export", total=10, user_id="w") == (2, True)
    assert s.start_task(task_id="t1", name="export", total=10, user_id="w") == (2, False)
    assert s.report_progress(task_id="t1", done=4, total=None, note="half-ish") == 3
    with pytest.raises(TaskNotFound):
        s.report_progress(task_id="nope", done=1, total=None, note=None)
    assert s.complete_task(task_id="t1", result={"url": "x"}) == 4
    with pytest.raises(TaskFinished):
        s.report_progress(task_id="t1", done=5, total=None, note=None)
    with pytest.raises(TaskFinished):
        s.fail_task(task_id="t1", error="late")
    task = s.view()["tasks"][0]
    assert (task["state"], task["done"], task["total"], task["result"]) == (
        "COMPLETED",
        10,
        10,
        {"url": "x"},
    )


def test_the_session_replays_to_the_same_view() -> None:
    s = Session.create("s", "alice", {"k": 1})
    s.record_message(message_id="m", role="user", content="x", user_id="alice")
    s.start_task(task_id="t", name="job", total=3, user_id="w")
    s.report_progress(task_id="t", done=1, total=None, note=None)
    s.fail_task(task_id="t", error="boom")
    s.attach(connection_id="c", user_id="alice", node="n", max_connections=1)
    s.detach(connection_id="c", reason="normal")
    s.end(user_id="alice")
    assert replay(list(s.collect_events())).view() == s.view()


def test_check_owner_refuses_another_user() -> None:
    s = Session.create("s", "alice")
    s.check_owner("alice")
    with pytest.raises(SessionOwnedByOther):
        s.check_owner("mallory")


@pytest.mark.parametrize(
    "value",
    ["session-1735095123-abc123", "sess_mgpresmh_6655kc3b0", "a", "a:b.c-d_e", "x" * 128],
)
def test_ids_from_the_allowed_alphabet_are_kept_as_given(value: str) -> None:
    assert check_id(value) == value
    kind, back = id_from_stream(session_stream(value))
    assert (kind, back) == ("session", value)
    assert id_from_stream(connection_stream(value)) == ("connection", value)


@pytest.mark.parametrize(
    "value", ["", "x" * 129, "has space", "é", "a/b", "a?b", None, 42, "null\x00"]
)
def test_anything_else_is_refused_as_an_invalid_id(value: object) -> None:
    assert not is_valid_id(value)
    with pytest.raises(InvalidId):
        check_id(value)
