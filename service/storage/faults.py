"""What an error from the store says about the store.

Both recorders raise eventsourcing's exceptions, each made ``from`` the
driver's own (sqlite3's or psycopg's), which says more. Three answers:

* **unavailable** (:func:`store_down`): nothing was recorded and the call is
  answered 503 ``unavailable``, not 500: the store could not be reached, could
  not write, or did not answer in time, as opposed to refusing what one
  command made (a conflict, data it cannot hold: the command's own).
* **down** (:func:`down`), the part of those that says the store as a whole
  is away: the connection is lost or refused, the pool found none in time,
  the server is shutting down or out of room, the file is read-only, the disk
  is full, an I/O error. The node's health view
  (service/application/health.py) then fails calls fast until its probe
  finds the store again.
* **busy** (:func:`busy`): the store is there but one statement waited longer
  than its deadline (SQLite's busy timeout, PostgreSQL's ``lock_timeout`` or
  ``statement_timeout``). 503 for that call, but one slow statement must not
  fail every other call.

A SQLite error that is a mistake of the query (``no such table``, too many
variables) is unavailable for its call, as before, but does not take the
store for down.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError

# SQLite's primary result codes for "another connection holds the lock".
_SQLITE_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
# ... and for a file that cannot be read or written as it stands.
_SQLITE_DOWN = {
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_READONLY,
}
# psycopg's errors are looked up where one is seen, not imported here: a
# process on a SQLite store never loads psycopg, and then none of its errors
# can be raised. SQLSTATEs of a statement that outwaited its deadline
# (query_canceled, lock_not_available):
_PG_BUSY = ("57014", "55P03")
# SQLSTATE classes of a server that is away, shutting down, out of room or
# broken (connection exception, operator intervention's shutdowns,
# insufficient resources, system error, internal error).
_PG_DOWN = ("08", "57P", "53", "58", "XX")
# A standby, or a database set read-only (read_only_sql_transaction): no
# write can succeed.
_PG_READ_ONLY = "25006"


def _psycopg_error() -> Any:
    psycopg = sys.modules.get("psycopg")
    return psycopg.Error if psycopg is not None else ()


def _sqlstate(error: BaseException | None) -> str | None:
    """The SQLSTATE of a psycopg error, if ``error`` is one that has one."""
    if error is not None and isinstance(error, _psycopg_error()):
        return getattr(error, "sqlstate", None)
    return None


def store_down(error: BaseException) -> bool:
    """Whether ``error`` leaves the call unrecorded for a reason of the
    store's (see the module): 503, not 500."""
    return (
        isinstance(error, OperationalError | InterfaceError | OSError)
        or _sqlstate(_driver_error(error)) == _PG_READ_ONLY
    )


def down(error: BaseException) -> bool:
    """Whether ``error`` says the store as a whole is away (see the module)."""
    if not store_down(error) or busy(error):
        return False
    cause = _driver_error(error)
    if isinstance(cause, sqlite3.Error):
        return getattr(cause, "sqlite_errorcode", 0) & 0xFF in _SQLITE_DOWN
    sqlstate = _sqlstate(cause)
    if sqlstate is not None:
        return sqlstate.startswith(_PG_DOWN) or sqlstate == _PG_READ_ONLY
    # No state from a server: the connection itself failed, or the pool had
    # none to give.
    return True


def busy(error: BaseException) -> bool:
    """Whether ``error`` is a statement that outwaited its deadline on a store
    that is otherwise there (see the module)."""
    cause = _driver_error(error)
    if isinstance(cause, sqlite3.Error):
        return getattr(cause, "sqlite_errorcode", 0) & 0xFF in _SQLITE_BUSY
    return _sqlstate(cause) in _PG_BUSY


def read_only(error: BaseException) -> bool:
    """Whether ``error`` is SQLite refusing a write on a connection it opened
    read-only (the file could not be opened for writing at the time): such a
    connection stays read-only, so it has to be opened again."""
    return (
        isinstance(error, sqlite3.OperationalError)
        and getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY
    )


def _driver_error(error: BaseException) -> BaseException | None:
    """The sqlite3 or psycopg error under ``error`` (itself, or what it was
    raised from), if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (sqlite3.Error, _psycopg_error())):
            return seen
        seen = seen.__cause__
    return None
