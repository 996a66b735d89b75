"""eventsourcing's SQLite recorder, inserting a batch with one executemany and
reading rows as plain tuples.

The stock application recorder inserts a batch one ``execute`` at a time, to
read each row's ``lastrowid`` (the notification ID), and reads through
``sqlite3.Row`` mappings. Inside the batch's transaction this process holds
SQLite's write lock, so the rows of one ``executemany`` take consecutive
rowids ending at ``last_insert_rowid()``: the IDs are known without a
round trip per row. Reads ask for tuples, which skips a mapping per row on
every path that reads the log (projections, replay, backlogs). Same table,
same rows, same IDs; see
docs/adr/0014-insert-a-batch-with-one-statement-on-sqlite.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor


class BatchSQLiteRecorder(SQLiteApplicationRecorder):
    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **_: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return []
        cursor = c.sqlite_cursor
        cursor.executemany(
            self.insert_events_statement,
            [(s.originator_id, s.originator_version, s.topic, s.state) for s in stored_events],
        )
        cursor.execute("SELECT last_insert_rowid()")
        last = int(cursor.fetchone()[0])
        return list(range(last - len(stored_events) + 1, last + 1))

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
        with self.datastore.transaction(commit=False) as c:
            cursor = c.sqlite_cursor
            cursor.row_factory = None
            cursor.execute(statement, params)
            return [
                Notification(id=i, originator_id=o, originator_version=v, topic=t, state=s)
                for i, o, v, t, s in cursor.fetchall()
            ]

    def select_rows(self, start: int, limit: int) -> list[tuple[int, str, int, str, bytes]]:
        """Notification-log rows from ID ``start`` on, as tuples."""
        with self.datastore.transaction(commit=False) as c:
            cursor = c.sqlite_cursor
            cursor.row_factory = None
            cursor.execute(self._select_rows_statement, (start, limit))
            rows: list[tuple[int, str, int, str, bytes]] = cursor.fetchall()
            return rows

    @property
    def _select_rows_statement(self) -> str:
        return (
            "SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {self.events_table_name} WHERE rowid>=? ORDER BY rowid LIMIT ?"
        )

    def select_stream_rows(
        self, stream_id: str, *, gt: int | None = None, limit: int | None = None
    ) -> list[tuple[str, int, str, bytes]]:
        """A stream's (stream ID, position, topic, state) rows, oldest first."""
        with self.datastore.transaction(commit=False) as c:
            cursor = c.sqlite_cursor
            cursor.row_factory = None
            cursor.execute(
                "SELECT originator_id, originator_version, topic, state "
                f"FROM {self.events_table_name} WHERE originator_id=? AND originator_version>? "
                "ORDER BY originator_version LIMIT ?",
                (stream_id, gt or 0, -1 if limit is None else limit),
            )
            rows: list[tuple[str, int, str, bytes]] = cursor.fetchall()
            return rows

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
        with self.datastore.transaction(commit=False) as c:
            cursor = c.sqlite_cursor
            cursor.row_factory = None
            cursor.execute(statement, params)
            return [
                StoredEvent(originator_id=o, originator_version=v, topic=t, state=s)
                for o, v, t, s in cursor.fetchall()
            ]
