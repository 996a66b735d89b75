"""eventsourcing's PostgreSQL recorder, failing fast and writing in one round trip.

Failing fast: the stock recorder retries each operation ten times on a
connection error, each try waiting up to the connect timeout: a write then
hangs for most of a minute before it fails, holding the writer thread and
every command queued behind it. sessiond answers 503 ``unavailable`` instead
and lets the client retry (ADR 0004). An operation is tried a second time
only when its first try failed at once, which is a pooled connection that
died with its server (the pool is checked before the second); a try that
waited out a deadline (the pool found no connection within the connect
timeout, the server cancelled the statement) is not tried again, so one
operation takes at most one deadline (ADR 0028). Pooled connections are not
pinged before use: the retry is what notices a dead one. The pool gives up
reconnecting a lost connection after ``RECONNECT_TIMEOUT`` and opens one
again when it is next asked for: psycopg_pool's own default backs off to
minutes, and a pool deep in its backoff left a node failing for tens of
seconds after its database was back.

One round trip: the stock insert is a pipeline of BEGIN, SET LOCAL, LOCK
TABLE, NOTIFY, INSERT, a sync, and then COMMIT, which is two round trips (three
with the ping) and a dozen trips through psycopg's Python layers per
transaction. Here the same steps run inside one server-side function, called
by one statement on an autocommit connection, so the statement is the
transaction: the table is locked EXCLUSIVE exactly as the stock recorder
does (so notification IDs commit in order and a follower never passes over a
gap that fills in later), and the rows go in as four arrays. The NOTIFY carries
``<origin> <first> <last>``: the recording process's own token and the range
of notification IDs, so that a node's follower can tell its own commits,
which it has already published, from other nodes'. See
docs/adr/0013-record-a-batch-on-postgresql-in-one-round-trip.md.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
)
from eventsourcing.utils import Environment, EnvType
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier, Literal

from service.storage.faults import busy
from service.storage.postgres_url import RECONNECT_TIMEOUT
from service.storage.rows import LogRow, StreamRow, stream_rows

# A first try that failed within this long met a dead pooled connection: it is
# tried once more, after a short pause and a check of the pool.
RETRY_WITHIN = 0.5
WAIT = 0.2
OWN_RANGES = 4096  # batches remembered for the follower; older ones are just read
ANSWER_PATIENCE = 0.05


def _fail_fast(method: Any) -> Any:
    raw = getattr(method, "__wrapped__", method)

    @functools.wraps(raw)
    def attempt(self: FailFastPostgresRecorder, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return raw(self, *args, **kwargs)
        except (InterfaceError, OperationalError) as e:
            if time.monotonic() - started > RETRY_WITHIN or busy(e):
                raise
        # The connection we were given died with its server: make the pool
        # test its idle connections before trying again.
        time.sleep(WAIT)
        self.datastore.pool.check()
        return raw(self, *args, **kwargs)

    return attempt


class FailFastPostgresRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        # Which process recorded a batch, for the NOTIFY payload.
        self.origin = os.urandom(8).hex()
        self._own: dict[tuple[int, int], None] = {}
        self._answered = threading.Condition()
        schema = Identifier(self.datastore.schema)
        self.append_function = f"sessiond_append_{events_table_name}"[:63]
        self.check_identifier_length(self.append_function)
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{fn}("
                "ids text[], versions bigint[], topics text[], states bytea[], origin text) "
                "RETURNS bigint[] LANGUAGE plpgsql AS $BODY$ "
                "DECLARE recorded bigint[]; "
                "BEGIN "
                "SET LOCAL lock_timeout = {lock_timeout}; "
                "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                "WITH inserted AS ("
                "  INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state)"
                "  SELECT * FROM unnest(ids, versions, topics, states)"
                "  RETURNING notification_id"
                ") SELECT array_agg(notification_id ORDER BY notification_id) "
                "INTO recorded FROM inserted; "
                "PERFORM pg_notify({channel}, origin || ' ' || recorded[1] || ' ' "
                "|| recorded[array_length(recorded, 1)]); "
                "RETURN recorded; "
                "END; $BODY$"
            ).format(
                schema=schema,
                fn=Identifier(self.append_function),
                table=Identifier(self.events_table_name),
                channel=Literal(self.channel_name),
                lock_timeout=Literal(f"{int(self.datastore.lock_timeout)}s"),
            )
        )
        self.select_rows_statement = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {schema}.{table} WHERE notification_id >= %s ORDER BY notification_id LIMIT %s"
        ).format(schema=schema, table=Identifier(self.events_table_name))
        # The same rows, as many as fit a number of bytes of state (as below).
        self.select_rows_page_statement = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM ("
            "SELECT notification_id, originator_id, originator_version, topic, state, "
            "SUM(octet_length(state)) OVER w AS upto, ROW_NUMBER() OVER w AS n "
            "FROM {schema}.{table} WHERE notification_id >= %s "
            "WINDOW w AS (ORDER BY notification_id ROWS UNBOUNDED PRECEDING) "
            "ORDER BY notification_id LIMIT %s"
            ") page WHERE upto <= %s OR n = 1 ORDER BY notification_id"
        ).format(schema=schema, table=Identifier(self.events_table_name))
        self.select_stream_rows_statement = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE originator_id = %s AND originator_version > %s "
            "ORDER BY originator_version LIMIT %s"
        ).format(schema=schema, table=Identifier(self.events_table_name))
        # The same rows, as many as fit a number of bytes of state (and always
        # the first): the running total is of octet_length, which PostgreSQL
        # reads from a stored value's header without fetching it, so what
        # does not fit is never read, let alone sent.
        self.select_stream_page_statement = SQL(
            "SELECT originator_id, originator_version, topic, state FROM ("
            "SELECT originator_id, originator_version, topic, state, "
            "SUM(octet_length(state)) OVER w AS upto, ROW_NUMBER() OVER w AS n "
            "FROM {schema}.{table} WHERE originator_id = %s AND originator_version > %s "
            "WINDOW w AS (ORDER BY originator_version ROWS UNBOUNDED PRECEDING) "
            "ORDER BY originator_version LIMIT %s"
            ") page WHERE upto <= %s OR n = 1 ORDER BY originator_version"
        ).format(schema=schema, table=Identifier(self.events_table_name))
        self.append_statement = SQL(
            "SELECT {schema}.{fn}(%s::text[], %s::bigint[], %s::text[], %s::bytea[], %s) AS ids"
        ).format(schema=schema, fn=Identifier(self.append_function))

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids: list[int] = self.insert_rows(stream_rows(stored_events))
        return ids

    @_fail_fast
    def insert_rows(self, rows: Sequence[StreamRow]) -> list[int]:
        """Insert (originator_id, originator_version, topic, state) rows in
        one statement; their notification IDs."""
        if not rows:
            return []
        ids_, versions, topics, states = zip(*rows, strict=True)
        params = (list(ids_), list(versions), list(topics), list(states), self.origin)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.append_statement, params, prepare=True)
            row = curs.fetchone()
        assert row is not None
        ids: list[int] = row["ids"]
        # Remember what this process recorded, so that its follower can skip
        # exactly these (see is_own): a batch whose answer was lost with its
        # connection, even if committed, is not here, and is read back.
        with self._answered:
            self._own[(ids[0], ids[-1])] = None
            if len(self._own) > OWN_RANGES:
                self._own.pop(next(iter(self._own)), None)
            self._answered.notify_all()
        return ids

    def is_own(self, origin: str, first: int, last: int, patience: float = ANSWER_PATIENCE) -> bool:
        """Whether this process recorded exactly IDs ``first``..``last`` in one
        batch and got its answer (the NOTIFY payload's origin and range).

        The NOTIFY can reach the follower a moment before the answer reaches
        the writer thread: a batch of our own origin gets ``patience`` seconds
        for its answer, and is read back if none comes (the answer was lost).
        """
        if origin != self.origin:
            return False
        key = (first, last)
        with self._answered:
            if self._answered.wait_for(lambda: key in self._own, timeout=patience):
                del self._own[key]
                return True
        return False

    def own_ranges(self, first: int, last: int) -> list[tuple[int, int]]:
        """The batches this process recorded and got the answer for that
        overlap IDs ``first``..``last`` (without waiting for any), as
        (first, last) ranges, for a follower reading from ``first`` on. Those
        that end by ``last`` are forgotten, and so are those that ended before
        ``first`` (answered after the follower had read past them)."""
        with self._answered:
            found = [key for key in self._own if key[0] <= last and key[1] >= first]
            for key in [key for key in self._own if key[1] <= last]:
                del self._own[key]
        return found

    @_fail_fast
    def select_rows(self, start: int, limit: int, max_bytes: int | None = None) -> list[LogRow]:
        """Notification-log rows from ID ``start`` on, as tuples; with
        ``max_bytes``, those that fit it, the first always."""
        statement, params = (
            (self.select_rows_statement, (start, limit))
            if max_bytes is None
            else (self.select_rows_page_statement, (start, limit, max_bytes))
        )
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(statement, params, prepare=True)
            return [(i, o, v, t, bytes(s)) for i, o, v, t, s in curs.fetchall()]

    @_fail_fast
    def select_stream_rows(
        self,
        stream_id: str,
        *,
        gt: int | None = None,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StreamRow]:
        """A stream's rows after position ``gt``, oldest first (no limit: LIMIT
        NULL); with ``max_bytes``, those that fit it, the first always."""
        params: tuple[Any, ...]
        if max_bytes is None:
            statement, params = self.select_stream_rows_statement, (stream_id, gt or 0, limit)
        else:
            statement = self.select_stream_page_statement
            params = (stream_id, gt or 0, limit, max_bytes)
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(statement, params, prepare=True)
            return [(o, v, t, bytes(s)) for o, v, t, s in curs.fetchall()]

    def close_connections(self) -> None:
        """Nothing of its own: every connection is the datastore's pool's."""

    select_events = _fail_fast(PostgresApplicationRecorder.select_events)
    select_notifications = _fail_fast(PostgresApplicationRecorder.select_notifications)
    max_notification_id = _fail_fast(PostgresApplicationRecorder.max_notification_id)


class SessiondPostgresFactory(PostgresFactory):
    """eventsourcing's PostgreSQL factory, its pool connecting with every
    libpq option of the store URL, and never pinging a connection before use.

    ``PostgresDatastore`` builds its pool from five keyword arguments (dbname,
    host, port, user, password) and has no setting for any other libpq option
    (sslmode, application_name, options, connect_timeout, ...). The pool's
    connection string, which psycopg merges under those keywords, is left
    empty: it is set here, before the pool opens (it opens on first use), to
    the store URL's whole connection string (``POSTGRES_CONNINFO``, made by
    service/storage/postgres_url.py), whose dbname, host, port, user and
    password are the keywords' own. Its reconnection gives up early (see the
    module).

    The pool tests no connection with a round trip before handing it out
    (once per writer transaction): ``POSTGRES_PRE_PING`` is off unless set,
    the store URL cannot set it, and the process environment does not reach
    here (``SessiondApplication.construct_env``). A dead connection fails its
    statement at once with an OperationalError, which the recorder's one
    retry answers by checking the pool (ADR 0013, ADR 0028).
    """

    POSTGRES_CONNINFO = "POSTGRES_CONNINFO"

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env if isinstance(env, Environment) else Environment(env=env))
        pool = self.datastore.pool
        pool.conninfo = self.env.get(self.POSTGRES_CONNINFO) or ""
        pool.reconnect_timeout = RECONNECT_TIMEOUT  # see the module
