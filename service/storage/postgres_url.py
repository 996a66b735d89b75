"""PostgreSQL connection settings from a store URL, in the two shapes sessiond needs.

A PostgreSQL store URL is a libpq URI (``postgresql://user:password@host:port/db``)
whose query may hold, besides any libpq option (``sslmode``,
``application_name``, ``options``, ...), a few options of sessiond's own:
``pool_size`` and ``max_overflow`` (eventsourcing's pool), ``lock_timeout``
(seconds a write waits for the table lock), ``statement_timeout`` (seconds
any statement may run; 0: no limit) and ``schema`` (of the event table).
libpq itself parses the rest (``psycopg.conninfo``), so a percent-encoded
password and every option mean what they mean to psql.

Every store call has a deadline (docs/adr/0028-fail-fast-while-the-store-is-down.md):
unless the URL says otherwise, a connection attempt gives up after
``connect_timeout`` seconds, a statement is cancelled by the server after
``statement_timeout`` (sent as ``options=-c statement_timeout=...``, so it
holds on every connection, pooled or not), and TCP keepalives and
``tcp_user_timeout`` notice a server that vanished without a word (a cut
network) within a few seconds instead of the operating system's minutes or
hours.

From that one parse come the libpq connection string that every direct
psycopg connection uses (the read-model pool, the log follower, the schema
lock) and eventsourcing's POSTGRES_* settings; the extra libpq options reach
eventsourcing's own pool through ``POSTGRES_CONNINFO``
(service/storage/postgres.py: ``SessiondPostgresFactory``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote

# psycopg is imported where a PostgreSQL URL is used, not here: a command on
# a SQLite store (``sessiond replay``, ``token``) starts without loading it.

# Held while a node creates tables, so several nodes starting at once on one
# PostgreSQL database do not race on CREATE TABLE IF NOT EXISTS.
SCHEMA_LOCK_KEY = 0x5E5510D

# sessiond's own query options, which libpq would refuse, and their defaults
# (None: not set unless given).
OWN_OPTIONS: dict[str, str | None] = {
    "pool_size": "5",
    "max_overflow": "10",
    "lock_timeout": "2",
    "statement_timeout": "3",
    "schema": None,
}
# libpq options whose defaults sessiond shortens (libpq's are none, or the
# operating system's): a request waits on an unreachable database at most
# connect_timeout seconds; a server gone silent is given up after about
# keepalives_idle + keepalives_count * keepalives_interval seconds while we
# wait for its answer, and after tcp_user_timeout milliseconds while what we
# sent goes unacknowledged.
LIBPQ_DEFAULTS = {
    "connect_timeout": "2",
    "keepalives_idle": "2",
    "keepalives_interval": "1",
    "keepalives_count": "2",
    "tcp_user_timeout": "4000",
}
# A pool gives up reconnecting a lost connection after this many seconds and
# opens one again when next asked (service/storage/postgres.py says why); here
# so that the read-model pool takes it without importing psycopg.
RECONNECT_TIMEOUT = 1.0
USAGE = "expected postgresql://user[:password]@host[:port]/db"


@dataclass(frozen=True)
class PostgresSettings:
    conninfo: str  # for psycopg.connect and psycopg_pool
    env: dict[str, str]  # eventsourcing's POSTGRES_* settings


def postgres_settings(url: str) -> PostgresSettings:
    """Parse a ``postgresql://`` (or ``postgres://``) URL; ValueError saying
    what is wrong with it."""
    params, own = _parse(url)
    if not params.get("dbname") or not params.get("host"):
        raise ValueError(USAGE)
    port = params.setdefault("port", "5432")
    if not port.isdigit():
        raise ValueError("the port is not a number")
    # As before libpq parsed the URL: these two fall back to the environment
    # here, so that eventsourcing (which needs both) and psycopg agree.
    params.setdefault("user", os.environ.get("PGUSER", "postgres"))
    password = params.pop("password", "") or os.environ.get("PGPASSWORD", "")
    if password:
        params["password"] = password
    for key, value in LIBPQ_DEFAULTS.items():
        params.setdefault(key, value)
    _limit_statements(params, own["statement_timeout"])
    from psycopg.conninfo import make_conninfo

    conninfo = make_conninfo("", **params)
    env = {
        "POSTGRES_DBNAME": params["dbname"],
        "POSTGRES_HOST": params["host"],
        "POSTGRES_PORT": port,
        "POSTGRES_USER": params["user"],
        "POSTGRES_PASSWORD": password,
        # eventsourcing waits this long for a pooled connection.
        "POSTGRES_CONNECT_TIMEOUT": params["connect_timeout"],
        "POSTGRES_POOL_SIZE": own["pool_size"],
        "POSTGRES_MAX_OVERFLOW": own["max_overflow"],
        "POSTGRES_LOCK_TIMEOUT": own["lock_timeout"],
        "POSTGRES_CONNINFO": conninfo,
    }
    if "schema" in own:
        env["POSTGRES_SCHEMA"] = own["schema"]
    return PostgresSettings(conninfo, env)


def _limit_statements(params: dict[str, str], seconds: str) -> None:
    """Add ``statement_timeout`` to the libpq ``options`` (the server applies
    it to every statement of the connection), unless the URL's own options set
    one or ``seconds`` is 0."""
    try:
        limit = float(seconds)
    except ValueError:
        raise ValueError(f"statement_timeout is seconds, not {seconds!r}") from None
    options = params.get("options", "")
    if limit <= 0 or "statement_timeout" in options:
        return
    ours = f"-c statement_timeout={int(limit * 1000)}"
    params["options"] = f"{ours} {options}" if options else ours


def _parse(url: str) -> tuple[dict[str, str], dict[str, str]]:
    """libpq's parameters of ``url`` and sessiond's own options (with their
    defaults). The other query pairs are left as written, for libpq to decode."""
    base, _, query = url.partition("?")
    own = {k: v for k, v in OWN_OPTIONS.items() if v is not None}
    kept: list[str] = []
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        if unquote(key) in OWN_OPTIONS:
            own[unquote(key)] = unquote(value)
        else:
            kept.append(pair)
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict("?".join([base, "&".join(kept)]) if kept else base)
    except psycopg.Error as e:
        raise ValueError(str(e).strip()) from None
    return {k: str(v) for k, v in params.items()}, own


@contextmanager
def schema_lock(conninfo: str) -> Iterator[None]:
    """Hold the schema lock on the database ``conninfo`` names."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        # A deliberate wait (another node is creating the tables), not a
        # statement that should give up.
        conn.execute("SET statement_timeout = 0")
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))
