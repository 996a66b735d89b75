"""The SQLite store's file, as it was when the node opened it.

An open SQLite connection holds its file, not its path: after the folder
holding the store is removed or renamed away, every connection the node has
open goes on reading and writing the file it opened, and SQLite reports
nothing wrong, while nobody else (a restart, a backup, ``sessiond replay``)
will ever see what is written there. :class:`StoreFile` is the file's
identity (device and inode) taken when it was opened; ``check`` compares it
with what the path leads to now, and a file gone or replaced by another
raises :class:`StoreFileGone`, an eventsourcing ``OperationalError`` with no
driver error under it, which service/storage/faults.py takes for the store
being down (503 ``unavailable``, the health view fails calls fast until the
probe finds the same file at the path again).

``connect`` opens a connection to the file without ever creating one
(``mode=rw``): a thread that opens its first connection while the store is
gone must not leave an empty database at the path, which would look like
the history had vanished. See
docs/adr/0051-take-a-store-file-gone-from-its-path-for-the-store-down.md.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventsourcing.persistence import OperationalError


class StoreFileGone(OperationalError):
    """The file at the store's path is not the one the node opened: removed,
    moved away, or replaced by another file. Nothing was recorded."""


@dataclass(frozen=True)
class StoreFile:
    path: str
    device: int
    inode: int

    @classmethod
    def at(cls, path: str | Path) -> StoreFile:
        """The file at ``path`` now (OSError if there is none)."""
        st = os.stat(path)
        return cls(os.path.abspath(path), st.st_dev, st.st_ino)

    def check(self) -> None:
        """Raise StoreFileGone unless the path still leads to this file: one
        ``stat``, about a microsecond."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            # The message reaches callers (503 answers, /readyz, which needs
            # no token): it names no path; the node's start line names its store.
            raise StoreFileGone(f"the store's file is gone from its path ({e.strerror})") from e
        if st.st_ino != self.inode or st.st_dev != self.device:
            raise StoreFileGone(
                "the store's file was replaced by another file at its path; "
                "the node goes on only with the file it opened"
            )

    def connect(self, **kwargs: Any) -> sqlite3.Connection:
        """A new connection to this file, never creating one: sqlite3's
        OperationalError (cannot open) if nothing is at the path, and
        StoreFileGone if another file is."""
        conn: sqlite3.Connection = sqlite3.connect(
            f"{Path(self.path).as_uri()}?mode=rw", uri=True, **kwargs
        )
        try:
            self.check()
        except StoreFileGone:
            conn.close()
            raise
        return conn
