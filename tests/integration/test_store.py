"""The event store on every backend: memory, a SQLite file, a PostgreSQL database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from domain.connection import Connection
from domain.ids import connection_stream, session_stream
from domain.session import Session
from service.store import (
    OrjsonTranscoder,
    SessiondApplication,
    StoreError,
    open_store,
    parse_store_url,
)

SEED_IDS = ["session-1735095123-abc123", "sess_mgpresmh_6655kc3b0", "a:b.c-d_e", "z" * 128]


@pytest.fixture
def store(store_url: str) -> Iterator[SessiondApplication]:
    app = open_store(parse_store_url(store_url))
    yield app
    app.close()


@pytest.mark.parametrize("client_id", SEED_IDS)
def test_sessions_and_connections_come_back_under_the_same_id_byte_for_byte(
    store: SessiondApplication, client_id: str
) -> None:
    session = Session.create(client_id, "alice", {"k": "v"})
    session.record_message(message_id="m1", role="user", content="héllo ✓", user_id="alice")
    connection = Connection.open(client_id, client_id, node="n1", proposed=True)
    connection.accept()
    store.save(session, connection)

    again = store.get_session(client_id)
    assert again is not None and again.view() == session.view()
    assert again.session_id == client_id
    conn = store.get_connection(client_id)
    assert conn is not None and conn.connection_id == client_id and conn.state == "ACCEPTED"
    # Same client string for a session and a connection: two streams, no collision.
    assert [e.type_name() for e in store.stream_events(session_stream(client_id))] == [
        "SessionCreated",
        "MessageRecorded",
    ]
    assert [e.type_name() for e in store.stream_events(connection_stream(client_id))] == [
        "CONNECTING",
        "ACCEPTED",
    ]


def test_events_are_read_back_after_a_position_and_up_to_a_limit(
    store: SessiondApplication,
) -> None:
    session = Session.create("paged", "alice")
    for i in range(10):
        session.record_message(message_id=f"m{i}", role="user", content=str(i), user_id="alice")
    store.save(session)
    page = store.stream_events(session_stream("paged"), after=3, limit=4)
    assert [e.originator_version for e in page] == [4, 5, 6, 7]
    assert store.stream_events(session_stream("paged"), after=11) == []


def test_a_session_can_be_read_as_it_stood_at_any_position(store: SessiondApplication) -> None:
    session = Session.create("travel", "alice")
    session.start_task(task_id="t", name="job", total=10, user_id="w")
    store.save(session)
    session.report_progress(task_id="t", done=5, total=None, note=None)
    session.end(user_id="alice")
    store.save(session)
    at_2 = store.get_session("travel", version=2)
    assert at_2 is not None
    assert at_2.view()["tasks"][0]["done"] == 0 and at_2.state == "ACTIVE"
    now = store.get_session("travel")
    assert now is not None and now.state == "ENDED" and now.version == 4


def test_timestamps_round_trip_in_utc_with_microseconds(store: SessiondApplication) -> None:
    session = Session.create("clock", "alice")
    created = session.created_on
    store.save(session)
    again = store.get_session("clock")
    assert again is not None
    assert again.created_on == created
    assert again.created_on.tzinfo is not None
    assert again.created_on.utcoffset() == UTC.utcoffset(None)


def test_the_transcoder_reads_back_what_it_writes() -> None:
    t = OrjsonTranscoder()
    ts = datetime(2026, 11, 22, 6, 37, 37, 123456, tzinfo=UTC)
    state = {"timestamp": ts, "data": {"a": [1, 2.5, None, "é"]}}
    assert t.decode(t.encode(state)) == state


def test_an_unknown_session_or_connection_is_none(store: SessiondApplication) -> None:
    assert store.get_session("never") is None
    assert store.get_connection("never") is None


def test_the_sqlite_file_is_in_wal_mode(sqlite_url: str) -> None:
    app = open_store(parse_store_url(sqlite_url))
    app.close()
    path = parse_store_url(sqlite_url).path
    assert path is not None
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://x", "bad store URL"),
        ("sqlite://relative.db", "bad store URL"),
        ("sqlite:///", "no file name"),
        ("sqlite:///:memory:", "memory://"),
        ("postgresql://host-only", "bad store URL"),
        ("postgresql://u@h:notaport/db", "port"),
    ],
)
def test_bad_store_urls_are_refused_with_a_readable_message(url: str, says: str) -> None:
    with pytest.raises(StoreError, match=says):
        parse_store_url(url)


def test_a_sqlite_store_in_a_missing_folder_cannot_be_opened(tmp_path: object) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store(parse_store_url("sqlite:////nonexistent-folder-xyz/s.db"))


def test_an_unreachable_postgresql_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot open store"):
        open_store(parse_store_url("postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"))


def test_the_fast_wire_path_shows_exactly_what_the_domain_events_show(
    store: SessiondApplication,
) -> None:
    from service.wire import wire_event

    session = Session.create("every-type", "alice", {"m": [1, None]})
    session.record_message(message_id="m", role="user", content="x", user_id="alice", tokens=3)
    session.start_task(task_id="t", name="job", total=2.5, user_id="w")
    session.report_progress(task_id="t", done=1, total=None, note="n")
    session.complete_task(task_id="t", result={"r": True})
    session.start_task(task_id="u", name="job", total=None, user_id="w")
    session.fail_task(task_id="u", error="boom")
    session.attach(connection_id="c", user_id="alice", node="n", max_connections=1)
    session.attach(connection_id="d", user_id="alice", node="n", max_connections=1)
    session.end(user_id="alice")
    connection = Connection.open("c", "every-type", node="n", proposed=False)
    connection.accept()
    with pytest.raises(Exception, match="not allowed"):
        connection.go_live(position=1)
    connection.close(code=4409, reason="superseded")
    store.save(session, connection)
    for stream in (session_stream("every-type"), connection_stream("c")):
        fast = store.stream_wire_events(stream)
        slow = [wire_event(e) for e in store.stream_events(stream)]
        assert fast == slow
        assert [e["position"] for e in fast] == list(range(1, len(fast) + 1))
