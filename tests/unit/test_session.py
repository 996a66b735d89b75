"""The Session aggregate and the ID rules, without any store."""

from __future__ import annotations

import time
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
from domain.ids import (
    check_id,
    connection_stream,
    id_from_stream,
    is_valid_id,
    new_connection_id,
    new_session_id,
    session_stream,
)
from domain.session import Session

SEED_IDS = ["session-1735095123-abc123", "sess_mgpresmh_6655kc3b0", "a:b.c-d_e"]
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"


def replay(events: list[Any]) -> Session:
    aggregate: Any = None
    for event in events:
        aggregate = event.mutate(aggregate)
    assert isinstance(aggregate, Session)
    return aggregate


def types(session: Session) -> list[str]:
    return [e.type_name() for e in session.collect_events()]


def fresh(session_id: str = "s") -> Session:
    """A session whose SessionCreated has already been collected."""
    s = Session.create(session_id, "alice")
    s.collect_events()
    return s


# --- create ---------------------------------------------------------------------


@pytest.mark.parametrize("session_id", SEED_IDS)
def test_a_session_is_created_under_the_proposed_id_at_position_1(session_id: str) -> None:
    s = Session.create(session_id, "alice", {"title": "t"})
    events = s.collect_events()
    assert [e.type_name() for e in events] == ["SessionCreated"]
    assert events[0].originator_version == 1 and s.position == 1
    assert events[0].originator_id == "session:" + session_id
    assert events[0].payload() == {
        "session_id": session_id,
        "owner": "alice",
        "metadata": {"title": "t"},
    }
    view = s.view()
    assert view["session_id"] == session_id and view["owner"] == "alice"
    assert view["state"] == "ACTIVE" and view["metadata"] == {"title": "t"}
    assert view["message_count"] == 0 and view["tasks"] == [] and view["connections"] == []
    assert view["created_at"] == view["updated_at"] and view["position"] == 1


def test_the_metadata_given_to_create_is_copied_not_shared() -> None:
    metadata: dict[str, Any] = {"k": "v"}
    s = Session.create("s", "alice", metadata)
    metadata["k"] = "changed"
    assert s.metadata == {"k": "v"}


def test_check_owner_refuses_another_user() -> None:
    s = Session.create("s", "alice")
    s.check_owner("alice")
    with pytest.raises(SessionOwnedByOther):
        s.check_owner("mallory")


# --- messages -------------------------------------------------------------------


def test_a_repeated_message_id_records_nothing_and_answers_the_first_position() -> None:
    s = fresh()
    assert s.record_message(message_id="m1", role="user", content="a", user_id="alice") == (2, True)
    assert s.record_message(message_id="m1", role="user", content="b", user_id="alice") == (
        2,
        False,
    )
    assert s.record_message(message_id="m2", role="assistant", content="c", user_id="alice") == (
        3,
        True,
    )
    assert s.record_message(message_id="m1", role="system", content="d", user_id="alice") == (
        2,
        False,
    )
    assert types(s) == ["MessageRecorded", "MessageRecorded"]
    assert s.message_count == 2 and s.position == 3


def test_a_message_carries_what_the_call_carried() -> None:
    s = fresh()
    s.record_message(
        message_id="m",
        role="assistant",
        content="héllo ✓",
        user_id="alice",
        model="gpt",
        tokens=7,
        metadata={"k": [1]},
        connection_id="tab-1",
    )
    (event,) = s.collect_events()
    assert event.payload() == {
        "message_id": "m",
        "role": "assistant",
        "content": "héllo ✓",
        "model": "gpt",
        "tokens": 7,
        "metadata": {"k": [1]},
        "user_id": "alice",
        "connection_id": "tab-1",
    }


def test_a_bad_role_or_negative_tokens_is_refused_before_anything_is_recorded() -> None:
    s = fresh()
    with pytest.raises(InvalidCommand):
        s.record_message(message_id="m", role="robot", content="x", user_id="alice")
    with pytest.raises(InvalidCommand):
        s.record_message(message_id="m", role="user", content="x", user_id="alice", tokens=-1)
    assert types(s) == []
    assert s.message_count == 0 and s.position == 1


# --- connections ----------------------------------------------------------------


def test_attaching_beyond_the_limit_detaches_the_oldest_as_superseded() -> None:
    s = fresh()
    assert s.attach(connection_id="tab-1", user_id="alice", node="n", max_connections=1) == []
    assert s.attach(connection_id="tab-2", user_id="alice", node="n", max_connections=1) == [
        "tab-1"
    ]
    assert s.connections == ["tab-2"]
    assert s.connection_users == {"tab-2": "alice"}
    events = s.collect_events()
    assert [e.type_name() for e in events] == [
        "ConnectionAttached",
        "ConnectionAttached",
        "ConnectionDetached",
    ]
    assert events[1].payload() == {"connection_id": "tab-2", "user_id": "alice", "node": "n"}
    assert events[2].payload() == {
        "connection_id": "tab-1",
        "reason": "superseded",
        "superseded_by": "tab-2",
    }


def test_two_live_connections_are_kept_when_the_limit_is_two_and_the_oldest_goes() -> None:
    s = fresh()
    s.attach(connection_id="a", user_id="alice", node="n", max_connections=2)
    s.attach(connection_id="b", user_id="alice", node="n", max_connections=2)
    assert s.attach(connection_id="c", user_id="alice", node="n", max_connections=2) == ["a"]
    assert s.connections == ["b", "c"]


def test_a_lowered_limit_supersedes_every_connection_beyond_it_oldest_first() -> None:
    s = fresh()
    for tab in ("a", "b", "c"):
        s.attach(connection_id=tab, user_id="alice", node="n", max_connections=3)
    assert s.attach(connection_id="d", user_id="alice", node="n", max_connections=1) == [
        "a",
        "b",
        "c",
    ]
    assert s.connections == ["d"]


def test_attaching_an_attached_connection_again_records_nothing() -> None:
    s = fresh()
    s.attach(connection_id="a", user_id="alice", node="n", max_connections=1)
    s.collect_events()
    assert s.attach(connection_id="a", user_id="alice", node="n", max_connections=1) == []
    assert types(s) == [] and s.connections == ["a"]


def test_a_limit_below_one_is_refused_before_anything_is_recorded() -> None:
    s = fresh()
    with pytest.raises(InvalidCommand):
        s.attach(connection_id="a", user_id="alice", node="n", max_connections=0)
    assert types(s) == [] and s.connections == []


def test_detaching_records_the_reason_and_an_unattached_connection_records_nothing() -> None:
    s = fresh()
    s.attach(connection_id="a", user_id="alice", node="n", max_connections=1)
    s.collect_events()
    assert s.detach(connection_id="ghost", reason="normal") is False
    assert types(s) == []
    assert s.detach(connection_id="a", reason="timeout") is True
    (event,) = s.collect_events()
    assert event.payload() == {"connection_id": "a", "reason": "timeout", "superseded_by": None}
    assert s.connections == [] and s.connection_users == {}
    assert s.detach(connection_id="a", reason="timeout") is False


# --- end ------------------------------------------------------------------------


def test_ending_twice_records_one_session_ended() -> None:
    s = fresh()
    assert s.end(user_id="alice") is True
    assert s.end(user_id="alice") is False
    assert s.end(user_id="bob") is False
    assert types(s) == ["SessionEnded"]
    assert s.view()["state"] == "ENDED" and s.ended_at == s.modified_on


def test_every_write_to_an_ended_session_raises_session_ended_and_records_nothing() -> None:
    s = fresh()
    s.start_task(task_id="t", name="job", total=None, user_id="w")
    s.end(user_id="alice")
    s.collect_events()
    writes = [
        lambda: s.record_message(message_id="m", role="user", content="x", user_id="alice"),
        lambda: s.attach(connection_id="c", user_id="alice", node="n", max_connections=1),
        lambda: s.start_task(task_id="t2", name="job", total=None, user_id="alice"),
        lambda: s.report_progress(task_id="t", done=1, total=None, note=None),
        lambda: s.complete_task(task_id="t", result=None),
        lambda: s.fail_task(task_id="t", error="late"),
    ]
    for write in writes:
        with pytest.raises(SessionEnded) as ended:
            write()
        assert ended.value.code == "session_ended"
    assert types(s) == []
    assert s.position == 3


def test_ending_detaches_every_live_connection_first_so_session_ended_is_the_last_event() -> None:
    # PROTOCOL.md v1.1: DELETE closes the session's live sockets (4403
    # session_ended); each socket's node sees its detach.
    s = fresh()
    s.attach(connection_id="a", user_id="alice", node="n", max_connections=2)
    s.attach(connection_id="b", user_id="alice", node="n", max_connections=2)
    s.collect_events()
    s.end(user_id="alice")
    events = s.collect_events()
    assert [type(e).__name__ for e in events] == [
        "ConnectionDetached",
        "ConnectionDetached",
        "SessionEnded",
    ]
    assert [(e.connection_id, e.reason) for e in events[:2]] == [  # type: ignore[attr-defined]
        ("a", "session_ended"),
        ("b", "session_ended"),
    ]
    assert s.connections == []
    # A socket closing after that finds nothing to detach, and records nothing.
    assert s.detach(connection_id="a", reason="normal") is False


# --- tasks ----------------------------------------------------------------------


def test_starting_a_task_twice_records_it_once_and_answers_the_first_position() -> None:
    s = fresh()
    assert s.start_task(task_id="t1", name="export", total=10, user_id="w") == (2, True)
    assert s.start_task(task_id="t1", name="other", total=99, user_id="w") == (2, False)
    assert types(s) == ["TaskStarted"]
    assert s.view()["tasks"] == [
        {
            "task_id": "t1",
            "name": "export",
            "state": "RUNNING",
            "done": 0,
            "total": 10,
            "note": None,
            "result": None,
            "error": None,
        }
    ]


def test_progress_moves_a_running_task_and_keeps_what_it_does_not_say() -> None:
    s = fresh()
    s.start_task(task_id="t", name="job", total=None, user_id="w")
    assert s.report_progress(task_id="t", done=1, total=4, note="first") == 3
    assert s.report_progress(task_id="t", done=2, total=None, note=None) == 4
    task = s.view()["tasks"][0]
    assert (task["done"], task["total"], task["note"]) == (2, 4, "first")


def test_completing_a_task_sets_done_to_its_total_and_keeps_the_result() -> None:
    s = fresh()
    s.start_task(task_id="t1", name="export", total=10, user_id="w")
    s.report_progress(task_id="t1", done=4, total=None, note="half-ish")
    assert s.complete_task(task_id="t1", result={"url": "x"}) == 4
    task = s.view()["tasks"][0]
    assert (task["state"], task["done"], task["total"], task["result"]) == (
        "COMPLETED",
        10,
        10,
        {"url": "x"},
    )


def test_failing_a_task_keeps_its_progress_and_the_error() -> None:
    s = fresh()
    s.start_task(task_id="t", name="job", total=10, user_id="w")
    s.report_progress(task_id="t", done=3, total=None, note=None)
    assert s.fail_task(task_id="t", error="boom") == 4
    task = s.view()["tasks"][0]
    assert (task["state"], task["done"], task["error"]) == ("FAILED", 3, "boom")


@pytest.mark.parametrize("finish", ["complete", "fail"])
def test_a_finished_task_refuses_progress_completion_and_failure(finish: str) -> None:
    s = fresh()
    s.start_task(task_id="t", name="job", total=10, user_id="w")
    if finish == "complete":
        s.complete_task(task_id="t", result=None)
    else:
        s.fail_task(task_id="t", error="boom")
    s.collect_events()
    with pytest.raises(TaskFinished) as finished:
        s.report_progress(task_id="t", done=5, total=None, note=None)
    assert finished.value.code == "task_finished"
    with pytest.raises(TaskFinished):
        s.complete_task(task_id="t", result=None)
    with pytest.raises(TaskFinished):
        s.fail_task(task_id="t", error="late")
    assert types(s) == []


def test_an_unknown_task_is_task_not_found_for_every_task_command() -> None:
    s = fresh()
    for write in (
        lambda: s.report_progress(task_id="nope", done=1, total=None, note=None),
        lambda: s.complete_task(task_id="nope", result=None),
        lambda: s.fail_task(task_id="nope", error="x"),
    ):
        with pytest.raises(TaskNotFound) as missing:
            write()
        assert missing.value.code == "task_not_found"
    assert types(s) == []


def test_negative_task_counts_are_refused_before_anything_is_recorded() -> None:
    s = fresh()
    with pytest.raises(InvalidCommand):
        s.start_task(task_id="t", name="job", total=-1, user_id="w")
    s.start_task(task_id="t", name="job", total=None, user_id="w")
    s.collect_events()
    with pytest.raises(InvalidCommand):
        s.report_progress(task_id="t", done=-1, total=None, note=None)
    with pytest.raises(InvalidCommand):
        s.report_progress(task_id="t", done=1, total=-5, note=None)
    assert types(s) == []


# --- replay ---------------------------------------------------------------------


def test_the_session_replays_to_the_same_view_at_every_position() -> None:
    s = Session.create("s", "alice", {"k": 1})
    views = [s.view()]
    steps = [
        lambda: s.record_message(message_id="m", role="user", content="x", user_id="alice"),
        lambda: s.start_task(task_id="t", name="job", total=3, user_id="w"),
        lambda: s.report_progress(task_id="t", done=1, total=None, note="n"),
        lambda: s.fail_task(task_id="t", error="boom"),
        lambda: s.start_task(task_id="u", name="job", total=None, user_id="w"),
        lambda: s.complete_task(task_id="u", result=[1]),
        lambda: s.attach(connection_id="c", user_id="alice", node="n", max_connections=1),
        lambda: s.attach(connection_id="d", user_id="alice", node="n", max_connections=1),
        lambda: s.detach(connection_id="d", reason="normal"),
        lambda: s.end(user_id="alice"),
    ]
    for step in steps:
        step()
        views.append(s.view())
    events = list(s.collect_events())
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
    assert replay(events).view() == s.view()
    # The views taken after each step are the views at those positions.
    by_position = {view["position"]: view for view in views}
    for position, view in by_position.items():
        assert replay(events[:position]).view() == view


# --- IDs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [*SEED_IDS, "a", "0", "-", "...", ":", ALPHABET, "x" * 128, (ALPHABET * 2)[:128]],
)
def test_ids_from_the_allowed_alphabet_up_to_128_characters_are_kept_as_given(
    value: str,
) -> None:
    assert is_valid_id(value)
    assert check_id(value) is value
    assert id_from_stream(session_stream(value)) == ("session", value)
    assert id_from_stream(connection_stream(value)) == ("connection", value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 129,
        (ALPHABET * 2)[:129],
        " ",
        "has space",
        " leading",
        "trailing ",
        "tab\there",
        "newline-at-end\n",
        "é",
        "caf\u00e9",
        "ﬁ",
        "١٢٣",
        "\uff11\uff12\uff13",  # full-width digits
        "\u0430bc",  # a Cyrillic a that looks Latin
        "emoji-🙂",
        "a/b",
        "a?b",
        "a#b",
        "a%20b",
        "null\x00",
        None,
        42,
        b"bytes",
    ],
)
def test_anything_else_is_refused_as_an_invalid_id(value: object) -> None:
    assert not is_valid_id(value)
    with pytest.raises(InvalidId) as refused:
        check_id(value, "session_id")
    assert refused.value.code == "invalid_id"
    assert refused.value.message.startswith("session_id must be 1 to 128 characters")


def test_the_refusal_message_of_a_huge_id_stays_short() -> None:
    with pytest.raises(InvalidId) as refused:
        check_id("x" * 100_000)
    assert len(refused.value.message) < 300


def test_generated_ids_are_valid_and_distinct() -> None:
    sessions = {new_session_id() for _ in range(100)}
    connections = {new_connection_id() for _ in range(100)}
    assert len(sessions) == len(connections) == 100
    assert all(is_valid_id(i) for i in sessions | connections)
    assert all(i.startswith("sess_") for i in sessions)
    assert all(i.startswith("conn_") for i in connections)


def test_generated_ids_sort_by_the_millisecond_they_were_made_in() -> None:
    """ADR 0020: the service's own IDs begin with the time, so a new stream's
    rows land beside the newest in the store's index; the rest is random."""
    made: list[tuple[int, str, int]] = []
    for make in [new_session_id, new_connection_id] * 3:
        before = time.time_ns() // 1_000_000
        ident = make()
        made.append((before, ident, time.time_ns() // 1_000_000))
        time.sleep(0.002)  # the next one falls in a later millisecond
    for before, ident, after in made:
        digits = ident.split("_", 1)[1]
        assert len(digits) == 32 and int(digits, 16) >= 0
        assert before <= int(digits[:12], 16) <= after
    suffixes = [ident.split("_", 1)[1] for _, ident, _ in made]
    assert suffixes == sorted(suffixes)
    assert len({s[12:] for s in suffixes}) == len(suffixes)


def test_a_session_and_a_connection_of_one_name_live_in_two_streams() -> None:
    assert session_stream("x") != connection_stream("x")
    with pytest.raises(ValueError):
        id_from_stream("x")
    # The prefix is sliced off, never parsed: colons in the ID survive.
    assert id_from_stream(session_stream("connection:x")) == ("session", "connection:x")
