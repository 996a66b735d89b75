"""One serving node per name: a lock held for as long as a node serves.

On SQLite there is one node per store file: ``serve`` holds an exclusive
``flock`` on ``<store>.lock`` beside it, and writes who holds it into the
file. A second ``serve`` on the same file would otherwise take the first
one's live sockets for a dead run's, record them ``lost``, and the first
would close them; instead it stops at once, naming the running one.

On PostgreSQL several nodes share the store, each under its own name
(``SESSIOND_NODE``); a node holds a session-level advisory lock keyed by its
name on a connection of its own, so a second node under a name a live node
holds is refused the same way.

Both locks are the operating system's or the database's: a node that dies,
even by ``kill -9``, lets go of its lock with its process or its connection,
so the next start under that name is never refused by a dead run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any

from service.storage.store import StoreError

# The first key of the two-key advisory lock: sessiond's node names.
NODE_LOCK_CLASS = 0x5E55


class SqliteServeLock:
    """An exclusive ``flock`` on the store's lock file, with the holder's
    description in it."""

    def __init__(self, store_path: Path, holder: str) -> None:
        self.path = store_path.with_name(store_path.name + ".lock")
        self.holder = holder
        self._fd: int | None = None
        # Whether this start made the lock file: a store served before only
        # by a release that took no lock (0.1.0) has none beside it.
        self.created = False

    def acquire(self) -> None:
        existed = self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot open the store's lock file {self.path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = os.pread(fd, 1000, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(
                f"another sessiond already serves this store ({held_by}); "
                "one serve per SQLite store"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.holder.encode() + b"\n", 0)
        self._fd = fd
        self.created = not existed

    def unmake(self) -> None:
        """Remove the lock file this start made (while still holding it), so
        that the next start asks again whether a lockless node serves."""
        if self.created and self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.created = False

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing lets go of the flock
            self._fd = None


class PostgresNodeLock:
    """A session-level advisory lock on the node's name, on a connection held
    for as long as the node serves."""

    def __init__(self, conninfo: str, node: str) -> None:
        self.conninfo = conninfo
        self.node = node
        self._conn: Any = None

    def acquire(self) -> None:
        import psycopg

        try:
            conn = psycopg.connect(self.conninfo, autocommit=True)
        except psycopg.Error as e:
            raise StoreError(f"cannot take the node name {self.node!r}: {e}") from e
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (NODE_LOCK_CLASS, self.node)
        ).fetchone()
        if not row or not row[0]:
            conn.close()
            raise StoreError(
                f"a live node already serves under the name {self.node!r}; "
                "give each node its own SESSIOND_NODE"
            )
        self._conn = conn

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()  # closing the session lets go of the lock
            self._conn = None
