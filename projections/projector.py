"""Apply the event log to the read-model tables, in batches.

The projector reads the store's notification log after the tracked position,
folds each batch into the rows it touches (loaded once per batch), and writes
the changed rows and the new position in one transaction. A rebuild empties
the tables and runs the same loop from position 0; it commits once per batch,
never once per event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from projections.projection import Row
from projections.sessions import apply_session
from projections.tables import PROJECTIONS, Tables
from projections.views import fold_connection
from service.storage.rows import LogRow

log = logging.getLogger("sessiond.projections")

Decode = Callable[[LogRow], dict[str, Any]]


@dataclass(frozen=True)
class Status:
    name: str
    position: int
    head: int

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


class Projector:
    def __init__(
        self,
        read_rows: Callable[[int, int], Sequence[LogRow]],
        head: Callable[[], int],
        decode: Decode,
        tables: Tables,
        *,
        batch_size: int = 2000,
    ) -> None:
        if batch_size < 1:
            # A batch of 0 reads nothing: a rebuild would empty the tables
            # and stop at position 0, reporting success.
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._read = read_rows
        self._head = head
        self._decode = decode
        self.tables = tables
        self.batch_size = batch_size
        self.position = 0

    def setup(self) -> None:
        self.tables.create()
        self.position = min(self.tables.positions().values())

    def status(self) -> list[Status]:
        head = self._head()
        positions = self.tables.positions()
        return [Status(name, positions.get(name, 0), head) for name in PROJECTIONS]

    def rebuild(self, on_progress: Callable[[int, int], None] | None = None) -> int:
        with self.tables.write() as c:
            self.tables.lock_positions(c)
            self.tables.truncate(c)
        self.position = 0
        return self.catch_up(on_progress)

    def catch_up(self, on_progress: Callable[[int, int], None] | None = None) -> int:
        """Apply everything recorded so far; returns how many events were applied."""
        applied = 0
        while True:
            n = self.run_batch()
            if n < 0:
                continue
            applied += n
            if on_progress is not None:
                on_progress(self.position, self._head())
            if n == 0:
                return applied

    def run_batch(self) -> int:
        """Apply one batch: events applied, 0 if none waited, -1 if another
        projector moved the position meanwhile (read again from there).

        Where several nodes project one database (PostgreSQL), the tracking
        rows are taken before the log is read, so the node that finds the
        position moved has read and decoded nothing. SQLite has one node, and
        its write lock stops the writer for as long as it is held, so there a
        batch is prepared first (read, decoded, and folded into the rows it
        touches, as they stand in one read snapshot at ``start``), and the
        lock is taken only to check that the position is still ``start`` and
        write the rows. See
        docs/adr/0021-prepare-a-sqlite-projection-batch-before-taking-the-write-lock.md.
        """
        start = self.position
        if self.tables.lock_before_read:
            with self.tables.write() as c:
                if not self._owns(c, start):
                    return -1
                rows = self._read(start + 1, self.batch_size)
                if not rows:
                    return 0
                batch = self._decoded(rows)
                self._write(c, self._folded(c, batch), batch.last)
            self.position = batch.last
            return batch.count
        rows = self._read(start + 1, self.batch_size)
        if not rows:
            # Nothing new, but the tables may have been reset under us (a
            # `projections rebuild` that truncated them, possibly interrupted):
            # then this projector's position is stale and must go back too.
            current = min(self.tables.positions().values(), default=0)
            if current < start:
                self.position = current
                return -1
            return 0
        batch = self._decoded(rows)
        with self.tables.snapshot() as c:
            # The rows as of ``start`` exactly, or give up: a view is a pure
            # fold of the log up to its table's position, so rows read where
            # the tracking rows say ``start`` are the rows at ``start`` still
            # when, under the lock below, they say ``start`` again.
            if not self._at(self.tables.read_positions(c), start):
                return -1
            folded = self._folded(c, batch)
        with self.tables.write() as c:
            if not self._owns(c, start):
                return -1
            self._write(c, folded, batch.last)
        self.position = batch.last
        return batch.count

    def _owns(self, c: Any, start: int) -> bool:
        """Lock the tracking rows; False (and the position moved to theirs)
        when they no longer say ``start``: another projector, or a rebuild."""
        return self._at(self.tables.lock_positions(c), start)

    def _at(self, positions: dict[str, int], start: int) -> bool:
        current = min(positions.values()) if positions else 0
        if current != start:
            self.position = current
            return False
        return True

    def _decoded(self, rows: Sequence[LogRow]) -> _Batch:
        """The rows as wire events, grouped by the session or connection
        they belong to (in log order within each)."""
        sessions: dict[str, list[dict[str, Any]]] = {}
        connections: dict[str, list[dict[str, Any]]] = {}
        for event in map(self._decode, rows):
            if "session_id" in event:
                sessions.setdefault(event["session_id"], []).append(event)
            else:
                connections.setdefault(event["connection_id"], []).append(event)
        return _Batch(sessions, connections, rows[-1][0], len(rows))

    def _folded(self, c: Any, batch: _Batch) -> tuple[list[Row], list[Row]]:
        """The session and connection rows the batch changes, folded from the
        rows as they stand (read through ``c``)."""
        sessions, connections = batch.sessions, batch.connections
        session_rows = self.tables.load(c, "sessiond_sessions", "session_id", list(sessions))
        connection_rows = self.tables.load(
            c, "sessiond_connections", "connection_id", list(connections)
        )
        # The loaded rows are this batch's own: sessions fold in place.
        return (
            _fold_all(session_rows, sessions, apply_session),
            _fold_all(connection_rows, connections, fold_connection),
        )

    def _write(self, c: Any, folded: tuple[list[Row], list[Row]], last: int) -> None:
        self.tables.upsert_sessions(c, folded[0])
        self.tables.upsert_connections(c, folded[1])
        self.tables.set_positions(c, last)


@dataclass(frozen=True)
class _Batch:
    """A batch of the log, decoded: wire events by session and by connection."""

    sessions: dict[str, list[dict[str, Any]]]
    connections: dict[str, list[dict[str, Any]]]
    last: int  # the notification ID of its last row
    count: int


def _fold_all(
    rows: dict[str, Row],
    events_by_id: dict[str, list[dict[str, Any]]],
    fold: Callable[[Row | None, dict[str, Any]], Row | None],
) -> list[Row]:
    changed: list[Row] = []
    for ident, events in events_by_id.items():
        row: Row | None = rows.get(ident)
        for event in events:
            if row is not None and event["position"] <= row["position"]:
                continue  # already applied (a rebuild racing a live projector)
            row = fold(row, event)
        if row is not None:
            changed.append(row)
    return changed
