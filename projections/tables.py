"""The read-model tables, kept in the same database as the event log.

``sessiond_sessions`` and ``sessiond_connections`` hold one row per session and
connection (indexed columns plus the whole view as JSON); ``sessiond_tracking``
holds, per projection, the position in the store's notification log up to
which it has been applied. A batch of rows and its tracking positions are
written in one transaction, so a crash never applies an event twice nor
skips one. Writers lock the tracking rows first (``FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two projectors on two nodes
cannot apply the same batch.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import orjson

from projections.views import Row
from service.storage.postgres_url import SCHEMA_LOCK_KEY

PROJECTIONS = ("sessions", "connections")

DDL = [
    """CREATE TABLE IF NOT EXISTS sessiond_tracking (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS sessiond_sessions (
        session_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        position BIGINT NOT NULL,
        view TEXT NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS sessiond_sessions_by_owner
        ON sessiond_sessions (owner, created_at DESC, session_id DESC)""",
    """CREATE INDEX IF NOT EXISTS sessiond_sessions_by_time
        ON sessiond_sessions (created_at DESC, session_id DESC)""",
    """CREATE TABLE IF NOT EXISTS sessiond_connections (
        connection_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        node TEXT NOT NULL,
        state TEXT NOT NULL,
        position BIGINT NOT NULL,
        view TEXT NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS sessiond_connections_by_node
        ON sessiond_connections (node, state)""",
]


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


class Tables:
    """SQL for both dialects; subclasses provide connections and placeholders."""

    placeholder = "?"
    # Take the tracking rows before reading the log (see Projector.run_batch).
    lock_before_read = False

    def sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        raise NotImplementedError
        yield

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        raise NotImplementedError
        yield

    @contextmanager
    def snapshot(self) -> Iterator[Cursor]:
        """Reads that all see one state of the database, taking no write
        lock (needed where ``lock_before_read`` is False)."""
        raise NotImplementedError
        yield

    def close(self) -> None:
        pass

    def create(self, extra_ddl: Sequence[str] = ()) -> None:
        with self.write() as c:
            if self.placeholder != "?":
                # Nodes starting together must not race on CREATE ... IF NOT EXISTS.
                c.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            for statement in [*DDL, *extra_ddl]:
                c.execute(statement)
            for name in PROJECTIONS:
                c.execute(
                    self.sql(
                        "INSERT INTO sessiond_tracking (name, position) VALUES (?, 0) "
                        "ON CONFLICT (name) DO NOTHING"
                    ),
                    (name,),
                )

    def lock_positions(self, c: Cursor) -> dict[str, int]:
        """Inside a write: the tracked positions, locked until commit."""
        # SQLite's write transaction already holds the file's one write lock.
        return self.read_positions(c, " FOR UPDATE" if self.placeholder != "?" else "")

    def positions(self) -> dict[str, int]:
        with self.read() as c:
            return self.read_positions(c)

    def read_positions(self, c: Cursor, lock: str = "") -> dict[str, int]:
        """The tracked positions, read through ``c`` (without locking them
        unless ``lock`` says how)."""
        c.execute("SELECT name, position FROM sessiond_tracking" + lock)
        return {name: int(pos) for name, pos in c.fetchall()}

    def set_positions(self, c: Cursor, position: int) -> None:
        c.execute(self.sql("UPDATE sessiond_tracking SET position = ?"), (position,))

    def load(self, c: Cursor, table: str, key: str, ids: Sequence[str]) -> dict[str, Row]:
        rows: dict[str, Row] = {}
        ids = list(ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            c.execute(self.sql(f"SELECT {key}, view FROM {table} WHERE {key} IN ({marks})"), chunk)
            for ident, view in c.fetchall():
                rows[ident] = orjson.loads(view)
        return rows

    def upsert_sessions(self, c: Cursor, rows: Sequence[Row]) -> None:
        if not rows:
            return
        c.executemany(
            self.sql(
                "INSERT INTO sessiond_sessions "
                "(session_id, owner, state, created_at, position, view) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (session_id) DO UPDATE SET state = excluded.state, "
                "position = excluded.position, view = excluded.view"
            ),
            [
                (
                    r["session_id"],
                    r["owner"],
                    r["state"],
                    r["created_at"],
                    r["position"],
                    orjson.dumps(r).decode(),
                )
                for r in rows
            ],
        )

    def upsert_connections(self, c: Cursor, rows: Sequence[Row]) -> None:
        if not rows:
            return
        c.executemany(
            self.sql(
                "INSERT INTO sessiond_connections "
                "(connection_id, session_id, node, state, position, view) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (connection_id) DO UPDATE SET state = excluded.state, "
                "position = excluded.position, view = excluded.view"
            ),
            [
                (
                    r["connection_id"],
                    r["session_id"],
                    r["node"],
                    r["state"],
                    r["position"],
                    orjson.dumps(r).decode(),
                )
                for r in rows
            ],
        )

    def truncate(self, c: Cursor) -> None:
        c.execute("DELETE FROM sessiond_sessions")
        c.execute("DELETE FROM sessiond_connections")
        c.execute("UPDATE sessiond_tracking SET position = 0")

    # --- queries --------------------------------------------------------------

    def session(self, session_id: str) -> Row | None:
        with self.read() as c:
            c.execute(
                self.sql("SELECT view FROM sessiond_sessions WHERE session_id = ?"),
                (session_id,),
            )
            found = c.fetchone()
        return orjson.loads(found[0]) if found else None

    def connection(self, connection_id: str) -> Row | None:
        with self.read() as c:
            c.execute(
                self.sql("SELECT view FROM sessiond_connections WHERE connection_id = ?"),
                (connection_id,),
            )
            found = c.fetchone()
        return orjson.loads(found[0]) if found else None

    def list_sessions(
        self, owner: str | None, limit: int, before: tuple[str, str] | None
    ) -> list[Row]:
        """Newest first; ``before`` is the (created_at, session_id) of the last one seen."""
        where: list[str] = []
        params: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND session_id < ?))")
            params.extend([before[0], before[0], before[1]])
        sql = "SELECT view FROM sessiond_sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, session_id DESC LIMIT ?"
        params.append(limit)
        with self.read() as c:
            c.execute(self.sql(sql), params)
            return [orjson.loads(v) for (v,) in c.fetchall()]

    def open_connections(self, node: str | None) -> list[Row]:
        """Connections not yet CLOSED (on ``node``, or anywhere)."""
        sql = "SELECT view FROM sessiond_connections WHERE state <> 'CLOSED'"
        params: list[Any] = []
        if node is not None:
            sql += " AND node = ?"
            params.append(node)
        with self.read() as c:
            c.execute(self.sql(sql), params)
            return [orjson.loads(v) for (v,) in c.fetchall()]

    def counts(self) -> dict[str, int]:
        with self.read() as c:
            c.execute("SELECT COUNT(*) FROM sessiond_sessions")
            sessions = int(c.fetchone()[0])
            c.execute("SELECT COUNT(*) FROM sessiond_connections")
            connections = int(c.fetchone()[0])
        return {"sessions": sessions, "connections": connections}


class SQLiteTables(Tables):
    """A SQLite file (WAL), or a private in-memory database for memory://."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._local = threading.local()
        self._lock = threading.RLock()
        self._shared: sqlite3.Connection | None = None
        if path is None:
            self._shared = self._connect(":memory:")

    def _connect(self, target: str) -> sqlite3.Connection:
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=30)
        if target != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            assert self._path is not None
            conn = self._connect(self._path)
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        with self._lock if self._shared is not None else _nolock():
            conn = self._conn()
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        with self._lock if self._shared is not None else _nolock():
            yield self._conn().cursor()

    @contextmanager
    def snapshot(self) -> Iterator[Cursor]:
        """A deferred transaction: in WAL mode its reads share one snapshot,
        taken at the first, and never wait for or block the writer."""
        with self._lock if self._shared is not None else _nolock():
            cur = self._conn().cursor()
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                cur.execute("COMMIT")

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class PostgresTables(Tables):
    placeholder = "%s"
    lock_before_read = True

    def __init__(self, conninfo: str) -> None:
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(conninfo, min_size=1, max_size=4, open=True, timeout=10)

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        with self._pool.connection() as conn, conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        self._pool.close()


@contextmanager
def _nolock() -> Iterator[None]:
    yield
