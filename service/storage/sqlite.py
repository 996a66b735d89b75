"""eventsourcing's SQLite recorder, on one plain connection per thread,
inserting a batch with one statement and reading rows as plain tuples.

The stock application recorder goes through eventsourcing's connection pool
for every statement (reader-writer interlocking, a ``BEGIN`` and a ``ROLLBACK``
around each read): measured here at about 21 µs of Python around a 3 µs
query, paid by every writer load, projector batch, backlog page and ping. It
also inserts a batch one ``execute`` at a time, to read each row's
``lastrowid`` (the notification ID), and reads through ``sqlite3.Row``
mappings.

Here each thread that touches the store has its own ``sqlite3`` connection to
the same file (autocommit, the same busy timeout; the file is in WAL mode, so
readers never block the writer nor the other way round). A read is one
statement, which SQLite runs on one consistent snapshot. A write is one
multi-row ``INSERT`` that SQLite runs as its own transaction (the file's write
lock taken up front, as ``BEGIN IMMEDIATE`` does): holding the write lock, its
rows take consecutive rowids ending at the cursor's ``lastrowid``, so the IDs
are known without a round trip per row. Same table, same rows, same IDs, same
exceptions (eventsourcing's ``IntegrityError`` for a conflicting row, which the
writer retries); see docs/adr/0014-insert-a-batch-with-one-statement-on-sqlite.md
and docs/adr/0019-insert-a-sqlite-batch-as-one-statement-in-its-own-transaction.md.

The file is the one the store was opened on, and only while its path still
leads to it (service/storage/storefile.py): every batch and every
``max_notification_id`` (the health probe's ping) first checks that it does,
and a connection opened later never creates a file at the path. Other reads
do not check: they read what was recorded before, and the health view stops
them once the probe has seen the file gone (ADR 0051).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

from service.storage.faults import read_only
from service.storage.rows import LogRow, StreamRow, fitting, stream_rows
from service.storage.storefile import StoreFile

# Batch sizes whose INSERT text is kept (larger ones are rare: bulk loads).
KEPT_INSERTS = 1024


def _translated(e: sqlite3.Error) -> Exception:
    """The eventsourcing exception the stock recorder raises for ``e``."""
    if isinstance(e, sqlite3.IntegrityError):
        return IntegrityError(e)
    if isinstance(e, sqlite3.OperationalError):
        return OperationalError(e)
    if isinstance(e, sqlite3.ProgrammingError):
        return ProgrammingError(e)
    if isinstance(e, sqlite3.InterfaceError):
        return InterfaceError(e)
    return DatabaseError(e)


class BatchSQLiteRecorder(SQLiteApplicationRecorder):
    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name)
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()
        table = self.events_table_name
        self._insert_one = f"INSERT INTO {table} VALUES (?,?,?,?)"
        self._inserts: dict[int, str] = {}
        self._rows = (
            "SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {table} WHERE rowid>=? ORDER BY rowid LIMIT ?"
        )
        self._stream_rows = (
            "SELECT originator_id, originator_version, topic, state "
            f"FROM {table} WHERE originator_id=? AND originator_version>? "
            "ORDER BY originator_version LIMIT ?"
        )
        self._max_id = f"SELECT MAX(rowid) FROM {table}"
        # The file this store is, taken once its table exists (create_table,
        # or the first connection); None for an in-memory database.
        self.file: StoreFile | None = None
        self._in_memory = bool(getattr(datastore.pool, "is_sqlite_memory_mode", False))

    def create_table(self) -> None:
        super().create_table()
        self._pin()

    def _pin(self) -> StoreFile | None:
        """The store's file, taken the first time it is asked for."""
        if self.file is None and not self._in_memory:
            pool: Any = self.datastore.pool
            try:
                self.file = StoreFile.at(pool.db_name)
            except OSError as e:
                raise InterfaceError(e) from e
        return self.file

    # --- connections ------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            pool: Any = self.datastore.pool
            options: dict[str, Any] = {
                "check_same_thread": False,  # closed by close(), from another thread
                "isolation_level": None,
                "cached_statements": 256,  # an INSERT per batch size, among others
                "timeout": pool.lock_timeout or 5,
            }
            file = self._pin()
            try:
                if file is None:
                    conn = sqlite3.connect(pool.db_name, uri=True, **options)
                else:  # never a new empty file where the store was
                    conn = file.connect(**options)
            except sqlite3.Error as e:
                raise InterfaceError(e) from e
            self._local.conn = conn
            # Four parameters a row, under the library's limit for one statement.
            self._local.rows_per_insert = max(
                1, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 4
            )
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    def _query(self, statement: str, params: Sequence[Any]) -> list[Any]:
        try:
            return self._conn().execute(statement, params).fetchall()
        except sqlite3.Error as e:
            raise _translated(e) from e

    def _forget(self, conn: sqlite3.Connection) -> None:
        """Close this thread's connection; the next call opens another. SQLite
        opens a file it cannot write read-only, and such a connection stays
        read-only after the file is writable again."""
        with self._opened_lock:
            if conn in self._opened:
                self._opened.remove(conn)
        conn.close()
        self._local.conn = None

    def close_connections(self) -> None:
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
        self._local = threading.local()

    # --- writes -----------------------------------------------------------------

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return self.insert_rows(stream_rows(stored_events))

    def insert_rows(self, rows: Sequence[StreamRow]) -> list[int]:
        """Insert (originator_id, originator_version, topic, state) rows in
        one transaction; their notification IDs.

        A batch is one multi-row ``INSERT`` run on its own, which SQLite runs
        as its own transaction: the write lock taken before anything is read
        (as ``BEGIN IMMEDIATE`` does, waiting out the busy timeout), the rows
        inserted, committed and synced, all in one call. Python's sqlite3
        lets go of the interpreter lock around each call, and under load every
        call then waited for the event loop to hand it back: ``BEGIN``, one
        ``executemany`` step per row, ``last_insert_rowid()`` and ``COMMIT``
        were each such a wait (measured in bench/; ADR 0014).
        """
        if not rows:
            return []
        conn = self._conn()
        per_insert = self._local.rows_per_insert
        if self.file is not None:
            # Committed to a file that is no longer at the store's path, the
            # batch would be acknowledged and lost: refused, nothing recorded.
            self.file.check()
        try:
            if len(rows) <= per_insert:
                last = self._insert(conn, rows)
            else:  # a bulk load: several statements, one explicit transaction
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for start in range(0, len(rows), per_insert):
                        last = self._insert(conn, rows[start : start + per_insert])
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            if read_only(e):
                self._forget(conn)
            raise _translated(e) from e
        # The write lock was held throughout: the rows took consecutive IDs.
        return list(range(last - len(rows) + 1, last + 1))

    def _insert(self, conn: sqlite3.Connection, rows: Sequence[StreamRow]) -> int:
        """One multi-row INSERT; the rowid of its last row."""
        cursor = conn.execute(self._insert_statement(len(rows)), [v for row in rows for v in row])
        return int(cursor.lastrowid or 0)

    def _insert_statement(self, count: int) -> str:
        statement = self._inserts.get(count)
        if statement is None:
            statement = self._insert_one + ",(?,?,?,?)" * (count - 1)
            if count <= KEPT_INSERTS:
                self._inserts[count] = statement
        return statement

    # --- reads ------------------------------------------------------------------

    def max_notification_id(self) -> int:
        """The last notification ID; StoreFileGone if the file is no longer
        at the store's path (this is the health probe's ping)."""
        if self.file is not None:
            self.file.check()
        return int(self._query(self._max_id, ())[0][0] or 0)

    def select_rows(self, start: int, limit: int, max_bytes: int | None = None) -> list[LogRow]:
        """Notification-log rows from ID ``start`` on, as tuples; with
        ``max_bytes``, stepped through as ``select_stream_rows`` does."""
        if max_bytes is None:
            return self._query(self._rows, (start, limit))
        return self._query_fitting(self._rows, (start, limit), max_bytes)

    def select_stream_rows(
        self,
        stream_id: str,
        *,
        gt: int | None = None,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StreamRow]:
        """A stream's (stream ID, position, topic, state) rows, oldest first.
        With ``max_bytes`` the rows are stepped through one at a time and the
        statement is given up at the first that does not fit, so a page of
        large events never holds more than one row past its bound."""
        params = (stream_id, gt or 0, -1 if limit is None else limit)
        if max_bytes is None:
            return self._query(self._stream_rows, params)
        return self._query_fitting(self._stream_rows, params, max_bytes)

    def _query_fitting(self, sql: str, params: tuple[Any, ...], max_bytes: int) -> list[Any]:
        """The leading rows of ``sql`` that fit ``max_bytes`` of state
        (:func:`fitting`), stepped through one at a time: the statement is
        given up at the first row that does not fit."""
        try:
            cursor = self._conn().execute(sql, params)
            try:
                return fitting(cursor, max_bytes)
            finally:
                cursor.close()
        except sqlite3.Error as e:
            raise _translated(e) from e

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        clauses: list[str] = []
        params: list[Any] = []
        if start is not None:
            clauses.append("rowid>=?" if inclusive_of_start else "rowid>?")
            params.append(start)
        if stop is not None:
            clauses.append("rowid<=?")
            params.append(stop)
        if topics:
            clauses.append(f"topic IN ({','.join('?' * len(topics))})")
            params.extend(topics)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        params.append(limit)
        statement = (
            "SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {self.events_table_name} {where}ORDER BY rowid LIMIT ?"
        )
        return [
            Notification(id=i, originator_id=o, originator_version=v, topic=t, state=s)
            for i, o, v, t, s in self._query(statement, params)
        ]

    def select_events(
        self,
        originator_id: Any,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        statement = (
            "SELECT originator_id, originator_version, topic, state "
            f"FROM {self.events_table_name} WHERE originator_id=? "
        )
        params: list[Any] = [str(originator_id)]
        if gt is not None:
            statement += "AND originator_version>? "
            params.append(gt)
        if lte is not None:
            statement += "AND originator_version<=? "
            params.append(lte)
        statement += "ORDER BY originator_version " + ("DESC " if desc else "ASC ")
        if limit is not None:
            statement += "LIMIT ?"
            params.append(limit)
        return [
            StoredEvent(originator_id=o, originator_version=v, topic=t, state=s)
            for o, v, t, s in self._query(statement, params)
        ]
