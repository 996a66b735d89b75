"""The SQLite store's file moved away, removed or replaced while it is open,
on real files (docs/adr/0051-take-a-store-file-gone-from-its-path-for-the-store-down.md):
nothing is committed into a file no longer at the store's path, nothing is
created where it was, the failure says the store is down, and the same file
back at its path is used again."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from eventsourcing.persistence import StoredEvent

from projections.tables import SQLiteTables
from service.application.readmodels import open_tables
from service.storage.faults import busy, down, store_down
from service.storage.store import SessiondApplication, open_store, parse_store_url
from service.storage.storefile import StoreFileGone

T = TypeVar("T")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def app(folder: Path) -> Iterator[SessiondApplication]:
    store = open_store(parse_store_url(f"sqlite:///{folder / 'log.db'}"))
    yield store
    store.close()


def rows(stream: str, first: int, n: int) -> list[StoredEvent]:
    return [
        StoredEvent(stream, v, "domain.session:Session.T", b'{"v":%d}' % v)
        for v in range(first, first + n)
    ]


def on_a_new_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a thread that has no connection yet; its result or error."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except Exception as e:
            outcome.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    result: T = outcome[0]
    return result


def test_a_batch_is_refused_while_the_store_file_is_moved_away_and_taken_when_it_is_back(
    app: SessiondApplication, folder: Path, tmp_path: Path
) -> None:
    recorder: Any = app.recorder
    assert recorder.insert_events(rows("session:a", 1, 2)) == [1, 2]
    away = tmp_path / "away"
    folder.rename(away)
    folder.mkdir()  # an empty folder where the store was

    with pytest.raises(StoreFileGone) as refused:
        recorder.insert_events(rows("session:a", 3, 1))
    assert store_down(refused.value) and down(refused.value) and not busy(refused.value)
    with pytest.raises(StoreFileGone):
        app.ping()  # the health probe's ping
    # A thread's first connection creates nothing where the store was.
    with pytest.raises(Exception) as opened:
        on_a_new_thread(app.ping)
    assert down(opened.value)
    with pytest.raises(Exception) as read:
        on_a_new_thread(lambda: app.log_rows(1, 10))
    assert down(read.value)
    assert list(folder.iterdir()) == []

    folder.rmdir()
    away.rename(folder)
    assert recorder.insert_events(rows("session:a", 3, 1)) == [3]
    assert on_a_new_thread(app.ping) == 3
    with sqlite3.connect(folder / "log.db") as db:
        assert db.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0] == 3


def test_a_batch_is_refused_once_another_file_is_at_the_store_path(
    app: SessiondApplication, folder: Path, tmp_path: Path
) -> None:
    recorder: Any = app.recorder
    recorder.insert_events(rows("session:a", 1, 1))
    (tmp_path / "other").mkdir()
    other = open_store(parse_store_url(f"sqlite:///{tmp_path / 'other' / 'log.db'}"))
    other.close()
    shutil.rmtree(folder)
    (tmp_path / "other").rename(folder)

    with pytest.raises(StoreFileGone, match="replaced"):
        recorder.insert_events(rows("session:a", 2, 1))
    with pytest.raises(StoreFileGone, match="replaced"):
        on_a_new_thread(lambda: app.log_rows(1, 10))
    with sqlite3.connect(folder / "log.db") as db:
        assert db.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0] == 0


def test_the_read_model_tables_write_nothing_and_create_nothing_while_the_file_is_away(
    app: SessiondApplication, folder: Path, tmp_path: Path
) -> None:
    tables = open_tables(parse_store_url(f"sqlite:///{folder / 'log.db'}"))
    assert isinstance(tables, SQLiteTables)
    try:
        tables.create()
        with tables.write() as c:
            c.execute("INSERT INTO sessiond_tracking VALUES ('t', 1)")
        away = tmp_path / "away"
        folder.rename(away)
        folder.mkdir()

        def write(position: int) -> None:
            with tables.write() as c:
                c.execute("UPDATE sessiond_tracking SET position = ? WHERE name = 't'", [position])

        with pytest.raises(StoreFileGone) as refused:
            write(2)
        assert down(refused.value)
        with pytest.raises(sqlite3.OperationalError, match="unable to open"):
            on_a_new_thread(lambda: write(3))
        assert list(folder.iterdir()) == []

        folder.rmdir()
        away.rename(folder)
        write(4)
        with tables.read() as c:
            c.execute("SELECT position FROM sessiond_tracking WHERE name = 't'")
            assert c.fetchone()[0] == 4
    finally:
        tables.close()
