"""What an error from the store says about the store.

Both recorders raise eventsourcing's exceptions, each made ``from`` the
driver's own (sqlite3's or psycopg's), which says more:

* **down**: the store cannot be reached or cannot take writes now (the
  connection is lost or refused, the pool found none in time, the file is
  read-only, the disk is full, an I/O error). Nothing was recorded; the
  caller gets 503 ``unavailable`` and the node's health view
  (service/application/health.py) fails calls fast until its probe finds
  the store again.
* **busy**: the store is there but one statement waited longer than its
  deadline (SQLite's busy timeout, PostgreSQL's ``lock_timeout`` or
  ``statement_timeout``). Also 503 for that call, but the store is not taken
  for down: one slow statement must not fail every other call.

Anything else (a conflict, data the store refuses) is the command's own.
"""

from __future__ import annotations

import sqlite3

from eventsourcing.persistence import InterfaceError, OperationalError
from psycopg import errors as pg_errors

# SQLite's primary result codes for "another connection holds the lock".
_SQLITE_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_PG_BUSY = (pg_errors.QueryCanceled, pg_errors.LockNotAvailable)


def store_down(error: BaseException) -> bool:
    """Whether ``error`` says the store cannot be reached or cannot write at
    all now (or was too busy to), as opposed to refusing what one command
    made."""
    return isinstance(error, OperationalError | InterfaceError | OSError)


def busy(error: BaseException) -> bool:
    """Whether ``error`` is a statement that outwaited its deadline on a store
    that is otherwise there (see the module)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlite3.OperationalError):
            return getattr(seen, "sqlite_errorcode", 0) & 0xFF in _SQLITE_BUSY
        if isinstance(seen, _PG_BUSY):
            return True
        seen = seen.__cause__
    return False


def read_only(error: BaseException) -> bool:
    """Whether ``error`` is SQLite refusing a write on a connection it opened
    read-only (the file could not be opened for writing at the time): such a
    connection stays read-only, so it has to be opened again."""
    return (
        isinstance(error, sqlite3.OperationalError)
        and getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY
    )
