"""The read-model tables, kept in the same database as the event log.

Each projection (projections/projection.py) has its tables, created from its
DDL; ``sessiond_tracking`` holds, per projection, the position in the store's
notification log up to which it has been applied. A batch of rows and its
tracking positions are written in one transaction, so a crash never applies
an event twice nor skips one. Writers lock the tracking rows first (``FOR
UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two projectors on
two nodes cannot apply the same batch. The queries the service reads the
sessions and connections projections with are here too.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Protocol

import orjson

from projections.projection import Row
from service.storage.faults import read_only
from service.storage.postgres_url import LIBPQ_DEFAULTS, RECONNECT_TIMEOUT, SCHEMA_LOCK_KEY
from service.storage.store import SQLITE_BUSY_TIMEOUT
from service.storage.storefile import StoreFile

TRACKING_DDL = """CREATE TABLE IF NOT EXISTS sessiond_tracking (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL
)"""


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

    def create(self, extra_ddl: Sequence[str] = (), tracked: Sequence[str] = ()) -> None:
        """The tracking table and ``extra_ddl``'s tables; a tracking row at
        position 0 for each name in ``tracked`` that has none yet."""
        with self.write() as c:
            if self.placeholder != "?":
                # Nodes starting together must not race on CREATE ... IF NOT
                # EXISTS: a deliberate wait, not a statement that should give up.
                c.execute("SET LOCAL statement_timeout = 0")
                c.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            for statement in [TRACKING_DDL, *extra_ddl]:
                c.execute(statement)
            for name in tracked:
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

    def set_positions(self, c: Cursor, names: Sequence[str], position: int) -> None:
        if not names:
            return
        marks = ",".join("?" * len(names))
        c.execute(
            self.sql(f"UPDATE sessiond_tracking SET position = ? WHERE name IN ({marks})"),
            (position, *names),
        )

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

    def upsert(
        self,
        c: Cursor,
        table: str,
        columns: Sequence[str],
        changing: Sequence[str],
        rows: Sequence[Row],
    ) -> None:
        """Insert ``rows`` into ``table``, or update those whose key (the
        first of ``columns``) is there: each row's fields named by
        ``columns``, and the whole row as JSON in ``view``. An update rewrites
        ``changing`` and ``view``; the other columns keep what was inserted."""
        if not rows:
            return
        marks = ", ".join("?" * (len(columns) + 1))
        updates = ", ".join(f"{column} = excluded.{column}" for column in [*changing, "view"])
        c.executemany(
            self.sql(
                f"INSERT INTO {table} ({', '.join(columns)}, view) VALUES ({marks}) "
                f"ON CONFLICT ({columns[0]}) DO UPDATE SET {updates}"
            ),
            [(*[r[column] for column in columns], orjson.dumps(r).decode()) for r in rows],
        )

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

    # Each read below answers with the position its projection's tables
    # stood at, taken in the same statement (one snapshot, on SQLite and
    # PostgreSQL alike): a reader that knows the log's head can tell a row
    # from tables being rebuilt under it (reset, then refilled batch by
    # batch) from a row that is current.

    def session_as_of(self, session_id: str) -> tuple[Row | None, int]:
        """The session's view, and the sessions projection's position."""
        select = "SELECT view FROM sessiond_sessions WHERE session_id = ?"
        return self._one_as_of(select, session_id, "sessions")

    def connection_as_of(self, connection_id: str) -> tuple[Row | None, int]:
        """The connection's view, and the connections projection's position."""
        select = "SELECT view FROM sessiond_connections WHERE connection_id = ?"
        return self._one_as_of(select, connection_id, "connections")

    def _one_as_of(self, select: str, key: str, projection: str) -> tuple[Row | None, int]:
        sql = (
            f"SELECT t.position, v.view FROM sessiond_tracking t LEFT JOIN ({select}) v "
            "ON 1 = 1 WHERE t.name = ?"
        )
        with self.read() as c:
            c.execute(self.sql(sql), (key, projection))
            found = c.fetchone()
        if found is None:
            return None, 0
        position, view = found
        return (None if view is None else orjson.loads(view)), int(position)

    def list_sessions_as_of(
        self, owner: str | None, limit: int, before: tuple[str, str] | None
    ) -> tuple[list[Row], int]:
        """Newest first (``before`` is the (created_at, session_id) of the last
        one seen), and the sessions projection's position."""
        where: list[str] = []
        params: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND session_id < ?))")
            params.extend([before[0], before[0], before[1]])
        inner = "SELECT view, created_at, session_id FROM sessiond_sessions"
        if where:
            inner += " WHERE " + " AND ".join(where)
        inner += " ORDER BY created_at DESC, session_id DESC LIMIT ?"
        sql = (
            f"SELECT t.position, v.view FROM sessiond_tracking t LEFT JOIN ({inner}) v "
            "ON 1 = 1 WHERE t.name = ? ORDER BY v.created_at DESC, v.session_id DESC"
        )
        with self.read() as c:
            c.execute(self.sql(sql), [*params, limit, "sessions"])
            found = c.fetchall()
        position = int(found[0][0]) if found else 0
        return [orjson.loads(v) for _, v in found if v is not None], position

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


class SQLiteTables(Tables):
    """A SQLite file (WAL), or a private in-memory database for memory://.

    The file is the one at ``path`` when the tables were opened (the event
    log's, opened first), and only while the path still leads to it
    (service/storage/storefile.py): a write first checks that it does, and a
    thread's first connection never creates a file at the path."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._local = threading.local()
        self._lock = threading.RLock()
        self._shared: sqlite3.Connection | None = None
        self._file: StoreFile | None = None
        if path is None:
            self._shared = self._connect(":memory:")
        else:
            with suppress(FileNotFoundError):
                self._file = StoreFile.at(path)

    def _connect(self, target: str) -> sqlite3.Connection:
        options: dict[str, Any] = {
            "isolation_level": None,
            "check_same_thread": False,
            "timeout": float(SQLITE_BUSY_TIMEOUT),
        }
        if self._file is not None:
            conn = self._file.connect(**options)
        else:
            # In memory, or a new database whose tables come before its log.
            conn = sqlite3.connect(target, **options)
            if target != ":memory:":
                self._file = StoreFile.at(target)
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
            if self._file is not None:
                # Never written into a file no longer at the store's path.
                self._file.check()
            try:
                cur = conn.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                    cur.execute("COMMIT")
                except BaseException:
                    # A COMMIT that failed (a full disk) may leave the
                    # transaction open: the connection must not keep it.
                    if conn.in_transaction:
                        with suppress(sqlite3.Error):
                            cur.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                if read_only(e) and self._shared is None:
                    # Opened while the file could not be written: it would
                    # stay read-only, so the next write opens another.
                    conn.close()
                    self._local.conn = None
                raise

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

        # Asked for a connection, the pool waits as long as a connection
        # attempt may take, and gives up reconnecting early (as the event
        # store's pool does: service/storage/postgres.py).
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=4,
            open=True,
            timeout=float(LIBPQ_DEFAULTS["connect_timeout"]),
            reconnect_timeout=RECONNECT_TIMEOUT,
        )

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
