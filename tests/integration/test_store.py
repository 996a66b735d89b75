"""The event store on every backend: memory, a SQLite file, a PostgreSQL database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from eventsourcing.persistence import StoredEvent

import domain.session
from domain.connection import Connection
from domain.ids import connection_stream, session_stream
from domain.session import Session
from service.storage.rows import RowRecorder
from service.storage.store import (
    OrjsonTranscoder,
    SessiondApplication,
    StoreError,
    open_store,
    parse_store_url,
    stored_row,
)
from service.storage.wire import _line_type, json_line_from_row4, wire_event, wire_from_row4

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
SEED_IDS = [
    "session-1735095123-abc123",
    "sess_mgpresmh_6655kc3b0",
    "a:b.c-d_e",
    (ALPHABET * 2)[:128],
]
AT = datetime(2026, 11, 22, 6, 37, 37, 123456, tzinfo=UTC)


@pytest.fixture
def store(store_url: str) -> Iterator[SessiondApplication]:
    app = open_store(parse_store_url(store_url))
    yield app
    app.close()


# --- IDs --------------------------------------------------------------------------


@pytest.mark.parametrize("client_id", SEED_IDS)
def test_a_session_comes_back_under_its_id_byte_for_byte(
    store: SessiondApplication, client_id: str
) -> None:
    session = Session.create(client_id, "alice", {"k": "v"})
    session.record_message(message_id="m1", role="user", content="héllo ✓", user_id="alice")
    store.save(session)

    again = store.get_session(client_id)
    assert again is not None
    assert again.session_id == client_id
    assert again.session_id.encode() == client_id.encode()
    assert again.view() == session.view()
    stored = store.recorder.select_events(session_stream(client_id))
    assert [s.originator_id for s in stored] == ["session:" + client_id] * 2
    wire = store.stream_wire_events(session_stream(client_id))
    assert {e["session_id"] for e in wire} == {client_id}


@pytest.mark.parametrize("client_id", SEED_IDS)
def test_a_connection_comes_back_under_its_id_byte_for_byte(
    store: SessiondApplication, client_id: str
) -> None:
    connection = Connection.open(client_id, "sess-of-" + client_id[:100], node="n1", proposed=True)
    connection.accept()
    connection.authenticate(user_id="alice", roles=["user"])
    store.save(connection)

    again = store.get_connection(client_id)
    assert again is not None
    assert again.connection_id == client_id
    assert again.view() == connection.view()
    assert again.state == "AUTHENTICATED" and again.user_id == "alice"
    stored = store.recorder.select_events(connection_stream(client_id))
    assert {s.originator_id for s in stored} == {"connection:" + client_id}
    wire = store.stream_wire_events(connection_stream(client_id))
    assert {e["connection_id"] for e in wire} == {client_id}
    assert [e["type"] for e in wire] == ["CONNECTING", "ACCEPTED", "AUTHENTICATED"]


def test_a_session_and_a_connection_with_one_id_do_not_collide(
    store: SessiondApplication,
) -> None:
    shared = "sess_mgpresmh_6655kc3b0"
    session = Session.create(shared, "alice")
    session.record_message(message_id="m", role="user", content="x", user_id="alice")
    connection = Connection.open(shared, shared, node="n1", proposed=True)
    connection.accept()
    store.save(session, connection)  # one transaction, two streams

    assert [e.type_name() for e in store.stream_events(session_stream(shared))] == [
        "SessionCreated",
        "MessageRecorded",
    ]
    assert [e.type_name() for e in store.stream_events(connection_stream(shared))] == [
        "CONNECTING",
        "ACCEPTED",
    ]
    again_session = store.get_session(shared)
    again_connection = store.get_connection(shared)
    assert isinstance(again_session, Session) and again_session.version == 2
    assert isinstance(again_connection, Connection) and again_connection.version == 2


def test_an_unknown_session_or_connection_is_none(store: SessiondApplication) -> None:
    assert store.get_session("never") is None
    assert store.get_connection("never") is None
    assert store.stream_events(session_stream("never")) == []


def test_a_connection_id_is_not_read_as_a_session_or_the_other_way_round(
    store: SessiondApplication,
) -> None:
    store.save(Connection.open("only-a-connection", "s", node="n", proposed=True))
    store.save(Session.create("only-a-session", "alice"))
    assert store.get_session("only-a-connection") is None
    assert store.get_connection("only-a-session") is None


# --- reading ----------------------------------------------------------------------


def test_events_are_read_back_after_a_position_and_up_to_a_limit(
    store: SessiondApplication,
) -> None:
    session = Session.create("paged", "alice")
    for i in range(10):
        session.record_message(message_id=f"m{i}", role="user", content=str(i), user_id="alice")
    store.save(session)
    stream = session_stream("paged")

    def positions(**kwargs: int) -> list[int]:
        return [e.originator_version for e in store.stream_events(stream, **kwargs)]

    assert positions() == list(range(1, 12))
    assert positions(after=0) == list(range(1, 12))
    assert positions(after=3, limit=4) == [4, 5, 6, 7]
    assert positions(limit=2) == [1, 2]
    assert positions(after=9) == [10, 11]
    assert positions(after=11) == []
    assert positions(after=50) == []
    # Paging with after=last-seen walks the whole history once, in order.
    seen: list[int] = []
    while page := positions(after=seen[-1] if seen else 0, limit=3):
        seen.extend(page)
    assert seen == list(range(1, 12))
    wire = store.stream_wire_events(stream, after=3, limit=4)
    assert [e["position"] for e in wire] == [4, 5, 6, 7]


def test_a_session_can_be_read_as_it_stood_at_any_position(store: SessiondApplication) -> None:
    session = Session.create("travel", "alice")
    session.start_task(task_id="t", name="job", total=10, user_id="w")
    store.save(session)
    session.report_progress(task_id="t", done=5, total=None, note=None)
    session.record_message(message_id="m", role="user", content="x", user_id="alice")
    session.end(user_id="alice")
    store.save(session)

    at_1 = store.get_session("travel", version=1)
    assert at_1 is not None and at_1.version == 1 and at_1.tasks == {}
    at_2 = store.get_session("travel", version=2)
    assert at_2 is not None
    assert at_2.view()["tasks"][0]["done"] == 0 and at_2.state == "ACTIVE"
    at_3 = store.get_session("travel", version=3)
    assert at_3 is not None and at_3.view()["tasks"][0]["done"] == 5 and at_3.message_count == 0
    at_4 = store.get_session("travel", version=4)
    assert at_4 is not None and at_4.message_count == 1 and at_4.state == "ACTIVE"
    now = store.get_session("travel")
    assert now is not None and now.state == "ENDED" and now.version == 5
    assert now.view() == session.view()
    # Reading the past does not disturb the present (the repository caches).
    again = store.get_session("travel")
    assert again is not None and again.version == 5


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store two applications can share (memory:// is private to one)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_two_applications_on_one_store_see_each_others_writes(shared_store_url: str) -> None:
    first = open_store(parse_store_url(shared_store_url))
    second = open_store(parse_store_url(shared_store_url))
    try:
        session = Session.create("seen", "alice")
        first.save(session)
        read = second.get_session("seen")
        assert read is not None
        read.record_message(message_id="m", role="user", content="x", user_id="alice")
        second.save(read)
        again = first.get_session("seen")  # cached in `first`, fast-forwarded
        assert again is not None and again.version == 2 and again.message_count == 1
    finally:
        first.close()
        second.close()


# --- timestamps -------------------------------------------------------------------


def test_timestamps_round_trip_in_utc_with_microseconds(
    store: SessiondApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(domain.session, "utcnow", lambda: AT)
    store.save(Session.create("clock", "alice"))
    again = store.get_session("clock")
    assert again is not None
    assert again.created_on == AT
    assert again.created_on.microsecond == 123456
    assert again.created_on.utcoffset() == timedelta(0)
    (event,) = store.stream_events(session_stream("clock"))
    assert event.timestamp == AT
    (row,) = store.recorder.select_events(session_stream("clock"))
    assert b'"timestamp":"2026-11-22T06:37:37.123456+00:00"' in bytes(row.state)


def test_a_timestamp_on_a_whole_second_round_trips_too(
    store: SessiondApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = AT.replace(microsecond=0)
    monkeypatch.setattr(domain.session, "utcnow", lambda: whole)
    store.save(Session.create("whole", "alice"))
    again = store.get_session("whole")
    assert again is not None and again.created_on == whole
    assert again.created_on.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "ts",
    [
        AT,
        AT.replace(microsecond=0),
        AT.replace(microsecond=1),
        datetime(2026, 11, 22, 8, 37, 37, 999999, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_the_transcoder_reads_back_what_it_writes(ts: datetime) -> None:
    t = OrjsonTranscoder()
    state = {"timestamp": ts, "data": {"a": [1, 2.5, None, "é", True], "n": {"k": "✓"}}}
    back = t.decode(t.encode(state))
    assert back == state
    assert back["timestamp"].utcoffset() == ts.utcoffset()


def test_the_transcoder_leaves_states_without_a_timestamp_alone() -> None:
    t = OrjsonTranscoder()
    assert t.decode(t.encode({"x": "2026-11-22T06:37:37+00:00"})) == {
        "x": "2026-11-22T06:37:37+00:00"
    }
    assert t.decode(t.encode([1, 2])) == [1, 2]


# --- opening ----------------------------------------------------------------------


def test_the_sqlite_file_is_in_wal_mode(sqlite_url: str) -> None:
    app = open_store(parse_store_url(sqlite_url))
    app.save(Session.create("wal", "alice"))
    app.close()
    path = parse_store_url(sqlite_url).path
    assert path is not None and path.is_file()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_sqlite_store_reopened_finds_what_it_wrote(sqlite_url: str) -> None:
    app = open_store(parse_store_url(sqlite_url))
    app.save(Session.create("kept", "alice"))
    app.close()
    again = open_store(parse_store_url(sqlite_url))
    try:
        session = again.get_session("kept")
        assert session is not None and session.owner == "alice"
    finally:
        again.close()


def test_store_urls_name_the_backend_and_its_settings(tmp_path: Path) -> None:
    memory = parse_store_url("memory://")
    assert memory.kind == "memory"
    assert memory.env["APPLICATION_RECORDER_TOPIC"] == "service.storage.memory:MemoryRecorder"
    sqlite = parse_store_url(f"sqlite:///{tmp_path}/a%20b.db")
    assert sqlite.kind == "sqlite" and sqlite.path == tmp_path / "a b.db"
    assert sqlite.env["SQLITE_DBNAME"] == str(tmp_path / "a b.db")
    pg = parse_store_url("postgresql://u:p%40ss@db.example:6543/sessions?schema=s1")
    assert pg.kind == "postgres"
    assert (pg.env["POSTGRES_HOST"], pg.env["POSTGRES_PORT"]) == ("db.example", "6543")
    assert (pg.env["POSTGRES_USER"], pg.env["POSTGRES_PASSWORD"]) == ("u", "p@ss")
    assert (pg.env["POSTGRES_DBNAME"], pg.env["POSTGRES_SCHEMA"]) == ("sessions", "s1")
    for config in (memory, sqlite, pg):
        assert config.env["ORIGINATOR_ID_TYPE"] == "text"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "bad store URL"),
        ("mysql://x", "bad store URL"),
        ("sqlite://relative.db", "bad store URL"),
        ("sqlite:///", "no file name"),
        ("sqlite:///some/folder/", "no file name"),
        ("sqlite:///:memory:", "memory://"),
        ("postgresql://host-only", "bad store URL"),
        ("postgresql:///db-without-host", "bad store URL"),
        ("postgresql://u@h:notaport/db", "port"),
    ],
)
def test_bad_store_urls_are_refused_with_a_readable_message(url: str, says: str) -> None:
    with pytest.raises(StoreError, match=says) as refused:
        parse_store_url(url)
    assert "Traceback" not in str(refused.value)


def test_a_sqlite_store_in_a_missing_folder_cannot_be_opened() -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store(parse_store_url("sqlite:////nonexistent-folder-xyz/s.db"))


def test_a_sqlite_store_on_a_folder_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        open_store(parse_store_url(f"sqlite:///{tmp_path / 'dir.db'}"))


def test_a_sqlite_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database file, not even close " * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        open_store(parse_store_url(f"sqlite:///{junk}"))


def test_an_unreachable_postgresql_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot open store"):
        open_store(parse_store_url("postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"))


def test_a_missing_postgresql_database_is_a_store_error(pg_dsn: str) -> None:
    base = pg_dsn.rsplit("/", 1)[0]
    with pytest.raises(StoreError, match="cannot open store"):
        open_store(parse_store_url(f"{base}/sessiond_no_such_database_x"))


def every_event_type(session_id: str, connection_id: str) -> tuple[Session, Connection]:
    """A session and a connection holding one event of every type."""
    session = Session.create(session_id, "alice", {"m": [1, None]})
    session.record_message(message_id="m", role="user", content="x", user_id="alice", tokens=3)
    session.start_task(task_id="t", name="job", total=2.5, user_id="w")
    session.report_progress(task_id="t", done=1, total=None, note="n")
    session.complete_task(task_id="t", result={"r": True})
    session.start_task(task_id="u", name="job", total=None, user_id="w")
    session.fail_task(task_id="u", error="boom")
    session.attach(connection_id="c", user_id="alice", node="n", max_connections=1)
    session.attach(connection_id="d", user_id="alice", node="n", max_connections=1)
    session.end(user_id="alice")
    connection = Connection.open(connection_id, session_id, node="n", proposed=False)
    connection.accept()
    with pytest.raises(Exception, match="not allowed"):
        connection.go_live(position=1)
    connection.close(code=4409, reason="superseded")
    return session, connection


def test_the_writers_direct_path_records_exactly_the_rows_save_records(
    store: SessiondApplication,
) -> None:
    """``record_aggregates`` (the writer's path) against ``Application.save``."""
    ours = every_event_type("direct", "c-direct")
    theirs = every_event_type("stock", "c-stock")
    assert store.record_aggregates(*ours)
    store.save(*theirs)

    def rows(stream: str, other: str) -> list[tuple[int, str, bytes]]:
        return [
            (s.originator_version, s.topic, s.state.replace(other.encode(), b"X"))
            for s in store.recorder.select_events(stream)
        ]

    for a, b in ((session_stream("direct"), session_stream("stock")),
                 (connection_stream("c-direct"), connection_stream("c-stock"))):  # fmt: skip
        mine = rows(a, a.split(":", 1)[1])
        stock = rows(b, b.split(":", 1)[1])
        # Same topics and positions; same states but for the IDs and the times.
        assert [(v, t) for v, t, _ in mine] == [(v, t) for v, t, _ in stock]
        for (_, _, m), (_, _, st) in zip(mine, stock, strict=True):
            assert set(orjson.loads(m)) == set(orjson.loads(st))
    # Event by event, the very bytes eventsourcing's mapper makes.
    session, connection = every_event_type("bytes", "c-bytes")
    for event in [*session.collect_events(), *connection.collect_events()]:
        assert StoredEvent(*stored_row(event)) == store.mapper.to_stored_event(event)  # type: ignore[arg-type]
    # And every event reads back as what was recorded.
    again = store.get_session("direct")
    assert again is not None and again.view() == ours[0].view()


def test_every_recorder_reads_its_rows_exactly_as_eventsourcing_reads_them(
    store: SessiondApplication,
) -> None:
    """The ``RowRecorder`` reads of each backend against the stock reads."""
    assert isinstance(store.recorder, RowRecorder)
    topic = "domain.session:Session.T"
    rows = [(f"session:r{i % 2}", i // 2 + 1, topic, b'{"n":%d}' % i) for i in range(9)]
    ids = store.row_recorder.insert_rows(rows)
    assert ids == list(range(ids[0], ids[0] + 9))
    for gt in (None, 0, 2, 9):
        for limit in (None, 1, 3):
            stored = store.recorder.select_events("session:r0", gt=gt, limit=limit)
            assert store.row_recorder.select_stream_rows("session:r0", gt=gt, limit=limit) == [
                (s.originator_id, s.originator_version, s.topic, s.state) for s in stored
            ]
    for start in (0, ids[0], ids[4]):
        assert store.row_recorder.select_rows(start, 4) == [
            (n.id, n.originator_id, n.originator_version, n.topic, n.state)
            for n in store.recorder.select_notifications(start, 4)
        ]
    # Bounded by bytes of state: as many as fit (each state here is 7 or 8
    # bytes), and always the first, however small the bound.
    whole = store.row_recorder.select_rows(ids[0], 9)
    for max_bytes, count in ((1, 1), (7, 1), (14, 2), (15, 2), (1000, 9)):
        assert store.row_recorder.select_rows(ids[0], 9, max_bytes) == whole[:count]
    assert store.log_rows(ids[0], 3, 1000) == whole[:3]


def test_the_store_is_opened_as_its_url_says_whatever_the_environment_holds(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eventsourcing reads the process environment; sessiond's store is
    configured by its URL alone, so variables meant for something else (a
    container's POSTGRES_*, a stray SQLITE_DBNAME) change nothing."""
    elsewhere = tmp_path / "elsewhere.db"
    for prefix in ("", "SESSIOND_"):
        monkeypatch.setenv(f"{prefix}PERSISTENCE_MODULE", "eventsourcing.popo")
        monkeypatch.setenv(f"{prefix}SQLITE_DBNAME", str(elsewhere))
        monkeypatch.setenv(f"{prefix}POSTGRES_DBNAME", "sessiond_no_such_database_x")
        monkeypatch.setenv(f"{prefix}POSTGRES_PORT", "1")
        monkeypatch.setenv(f"{prefix}POSTGRES_PASSWORD", "not-this-one")
    app = open_store(parse_store_url(store_url))
    try:
        app.save(Session.create("env-proof", "alice"))
        assert app.get_session("env-proof") is not None
    finally:
        app.close()
    assert not elsewhere.exists()


def test_a_json_lines_replay_writes_what_the_wire_path_would_encode(
    store: SessiondApplication,
) -> None:
    """``json_line_from_row4`` splices most rows from their stored bytes; each
    line is still the generic path's encoding, byte for byte, on every
    backend and for every event type (created events and shaped ones take
    the generic path)."""
    session, connection = every_event_type("lines", "c-lines")
    other = Session.create("lines-2", "alice", {"\u00e9": [1.5, None]})
    other.record_message(
        message_id="u", role="user", content='\u00e9 "q" \\ \n \U0001f600', user_id="a"
    )
    other.start_task(task_id="t", name="job", total=None, user_id="w")
    other.report_progress(task_id="t", done=0.1 + 0.2, total=1e300, note=None)
    store.save(session, connection, other)
    spliced = 0
    streams = (session_stream("lines"), session_stream("lines-2"), connection_stream("c-lines"))
    for stream in streams:
        rows = store.stream_rows(stream)
        lines = [json_line_from_row4(row) for row in rows]
        assert lines == [orjson.dumps(wire_from_row4(row)) + b"\n" for row in rows]
        assert [orjson.loads(line) for line in lines] == store.stream_wire_events(stream)
        spliced += sum(1 for row in rows if _line_type(row[2]) is not None)
    assert spliced > 10  # the splice is what ran, not only the generic path


def test_a_store_on_a_recorder_that_reads_no_rows_is_refused() -> None:
    with pytest.raises(TypeError, match="POPOApplicationRecorder"):
        SessiondApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def test_the_fast_wire_path_shows_exactly_what_the_domain_events_show(
    store: SessiondApplication,
) -> None:
    session, connection = every_event_type("every-type", "c")
    store.save(session, connection)
    for stream in (session_stream("every-type"), connection_stream("c")):
        fast = store.stream_wire_events(stream)
        domain_events = store.stream_events(stream)
        slow = [wire_event(e) for e in domain_events]
        assert fast == slow
        # ... and wire_event is what the domain says of each event.
        kind, client_id = stream.split(":", 1)
        assert slow == [
            {
                f"{kind}_id": client_id,
                "position": e.originator_version,
                "type": e.type_name(),
                "at": e.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "data": e.payload(),
            }
            for e in domain_events
        ]
        assert [e["position"] for e in fast] == list(range(1, len(fast) + 1))
