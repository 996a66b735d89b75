"""The SQLite recorder (one INSERT statement per batch, tuple reads) against
eventsourcing's stock recorder on the same file: the same IDs, the same rows,
the same answers to every query (ADRs 0014 and 0019)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder
from hypothesis import given, settings
from hypothesis import strategies as st

from service.storage.sqlite import BatchSQLiteRecorder
from service.storage.store import SessiondApplication, open_store, parse_store_url


@pytest.fixture
def app(tmp_path: Path) -> Iterator[SessiondApplication]:
    store = open_store(parse_store_url(f"sqlite:///{tmp_path / 'log.db'}"))
    yield store
    store.close()


def stock(app: SessiondApplication) -> SQLiteApplicationRecorder:
    recorder: Any = app.recorder
    return SQLiteApplicationRecorder(recorder.datastore, recorder.events_table_name)


def batch(stream: str, first: int, n: int) -> list[StoredEvent]:
    return [
        StoredEvent(stream, v, f"domain.session:Session.T{v % 3}", b'{"v":%d}' % v)
        for v in range(first, first + n)
    ]


def test_the_store_uses_the_batch_recorder(app: SessiondApplication) -> None:
    assert type(app.recorder) is BatchSQLiteRecorder


def test_a_batch_gets_the_notification_ids_its_rows_were_stored_under(
    app: SessiondApplication, tmp_path: Path
) -> None:
    ids = app.recorder.insert_events(batch("session:a", 1, 5))
    ids += app.recorder.insert_events(batch("session:b", 1, 3) + batch("session:a", 6, 2))
    db = sqlite3.connect(tmp_path / "log.db")
    rows = db.execute(
        "SELECT rowid, originator_id, originator_version FROM stored_events ORDER BY rowid"
    ).fetchall()
    db.close()
    assert [r[0] for r in rows] == ids == list(range(1, 11))
    assert [(r[1], r[2]) for r in rows][-5:] == [
        ("session:b", 1), ("session:b", 2), ("session:b", 3), ("session:a", 6), ("session:a", 7),
    ]  # fmt: skip


def test_a_conflicting_batch_records_nothing_and_ids_go_on_densely(
    app: SessiondApplication,
) -> None:
    app.recorder.insert_events(batch("session:a", 1, 2))
    with pytest.raises(IntegrityError):
        app.recorder.insert_events(batch("session:b", 1, 2) + batch("session:a", 2, 1))
    assert app.recorder.select_events("session:b") == []
    assert app.recorder.insert_events(batch("session:b", 1, 1)) == [3]


def test_a_batch_waits_for_another_writer_then_lands_whole_after_it(
    app: SessiondApplication, tmp_path: Path
) -> None:
    """The projector writes the same file: a batch arriving while it holds
    the write lock waits (busy timeout), even though the projector's commit
    makes the batch's first view of the file stale, and lands after it."""
    app.recorder.insert_events(batch("session:a", 1, 1))
    other = sqlite3.connect(tmp_path / "log.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute(
        "INSERT INTO stored_events VALUES ('session:z', 1, 'domain.session:Session.T0', x'7b7d')"
    )
    released = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    released.start()
    try:
        ids = app.recorder.insert_events(batch("session:b", 1, 3))
    finally:
        released.join()
        other.close()
    assert ids == [3, 4, 5]
    assert [e.originator_version for e in app.recorder.select_events("session:b")] == [1, 2, 3]


def test_a_batch_larger_than_one_statement_is_still_one_transaction(
    app: SessiondApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the library's parameter limit a batch takes several INSERTs; a
    conflict in the last one still records none of them."""
    real_connect = sqlite3.connect

    def small_limit(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 8)  # two rows a statement
        return conn

    monkeypatch.setattr(sqlite3, "connect", small_limit)
    app.recorder.close_connections()
    assert app.recorder.insert_events(batch("session:a", 1, 5)) == [1, 2, 3, 4, 5]
    with pytest.raises(IntegrityError):
        app.recorder.insert_events(batch("session:b", 1, 4) + batch("session:a", 5, 1))
    assert app.recorder.select_events("session:b") == []
    assert app.recorder.insert_events(batch("session:b", 1, 3)) == [6, 7, 8]


@settings(max_examples=40, deadline=None)
@given(
    start=st.one_of(st.none(), st.integers(0, 12)),
    stop=st.one_of(st.none(), st.integers(0, 12)),
    limit=st.integers(1, 15),
    inclusive=st.booleans(),
    topics=st.lists(st.sampled_from(["domain.session:Session.T0", "domain.session:Session.T1"])),
    gt=st.one_of(st.none(), st.integers(0, 6)),
    lte=st.one_of(st.none(), st.integers(0, 6)),
    desc=st.booleans(),
    events_limit=st.one_of(st.none(), st.integers(1, 6)),
)
def test_reads_answer_exactly_as_the_stock_recorder_does(
    tmp_path_factory: pytest.TempPathFactory,
    start: int | None,
    stop: int | None,
    limit: int,
    inclusive: bool,
    topics: list[str],
    gt: int | None,
    lte: int | None,
    desc: bool,
    events_limit: int | None,
) -> None:
    path = tmp_path_factory.mktemp("cmp") / "log.db"
    app = open_store(parse_store_url(f"sqlite:///{path}"))
    try:
        app.recorder.insert_events(batch("session:a", 1, 5) + batch("connection:a", 1, 3))
        app.recorder.insert_events(batch("session:b", 1, 4))
        theirs = stock(app)
        assert app.recorder.select_notifications(
            start, limit, stop, topics, inclusive_of_start=inclusive
        ) == theirs.select_notifications(start, limit, stop, topics, inclusive_of_start=inclusive)
        for stream in ("session:a", "connection:a", "session:none"):
            assert app.recorder.select_events(
                stream, gt=gt, lte=lte, desc=desc, limit=events_limit
            ) == theirs.select_events(stream, gt=gt, lte=lte, desc=desc, limit=events_limit)
            assert app.recorder.select_stream_rows(stream, gt=gt, limit=events_limit) == [
                (e.originator_id, e.originator_version, e.topic, e.state)
                for e in theirs.select_events(stream, gt=gt, limit=events_limit)
            ]
        assert app.recorder.select_rows(start or 0, limit) == [
            (n.id, n.originator_id, n.originator_version, n.topic, n.state)
            for n in theirs.select_notifications(start or 0, limit)
        ]
    finally:
        app.close()
