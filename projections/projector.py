"""Apply the event log to the registered projections, in batches.

Each projection has its own tracked position. The projector reads the store's
notification log after the lowest of them, and each projection takes only the
rows after its own: it folds them into the rows they touch (loaded once per
batch), and the changed rows and the moved positions are written in one
transaction. A rebuild empties the projections it names, puts their
positions back to 0, and runs the same loop; the others, ahead, take nothing
until it reaches them. It commits once per batch, never once per event.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from projections.connections import CONNECTIONS
from projections.projection import Fold, Projection, Row, WireEvent
from projections.sessions import SESSIONS
from projections.tables import Cursor, Tables
from service.storage.rows import LogRow

log = logging.getLogger("sessiond.projections")

# The projections every node keeps: adding one is its module and a line here.
PROJECTIONS: tuple[Projection, ...] = (SESSIONS, CONNECTIONS)

Decode = Callable[[LogRow], WireEvent]


@dataclass(frozen=True)
class Status:
    name: str
    position: int
    head: int

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


def reset(tables: Tables, c: Cursor, projections: Sequence[Projection]) -> None:
    """Empty ``projections`` and put their positions back to 0: the first
    step of a rebuild (inside a write that has locked the tracking rows)."""
    for projection in projections:
        projection.truncate(tables, c)
    tables.set_positions(c, [p.name for p in projections], 0)


class Projector:
    def __init__(
        self,
        read_rows: Callable[[int, int], Sequence[LogRow]],
        head: Callable[[], int],
        decode: Decode,
        tables: Tables,
        *,
        batch_size: int = 2000,
        projections: Sequence[Projection] = PROJECTIONS,
    ) -> None:
        if batch_size < 1:
            # A batch of 0 reads nothing: a rebuild would empty the tables
            # and stop at position 0, reporting success.
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        names = [p.name for p in projections]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"projections need distinct names, got {names}")
        self._read = read_rows
        self._head = head
        self._decode = decode
        self.tables = tables
        self.batch_size = batch_size
        self.projections = tuple(projections)
        # Each projection's position as this projector last saw it written.
        self.positions = dict.fromkeys(names, 0)

    @property
    def position(self) -> int:
        """How far every projection has been applied: the lowest position."""
        return min(self.positions.values())

    def setup(self) -> None:
        self.tables.create(
            [statement for p in self.projections for statement in p.ddl],
            tracked=list(self.positions),
        )
        self._agrees(self.tables.positions())

    def select(self, names: Collection[str] = ()) -> list[Projection]:
        """The projections named (all when none is), in registration order."""
        unknown = [name for name in names if name not in self.positions]
        if unknown:
            raise ValueError(
                f"no projection named {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(self.positions)}"
            )
        return [p for p in self.projections if not names or p.name in names]

    def status(self, names: Collection[str] = ()) -> list[Status]:
        head = self._head()
        positions = self.tables.positions()
        return [Status(p.name, positions.get(p.name, 0), head) for p in self.select(names)]

    def counts(self, names: Collection[str] = ()) -> dict[str, int]:
        """How many rows each projection holds."""
        return {p.name: p.count(self.tables) for p in self.select(names)}

    def rebuild(
        self,
        on_progress: Callable[[int, int], None] | None = None,
        names: Collection[str] = (),
    ) -> int:
        """Rebuild the projections named (all when none is) from position 0,
        leaving the others as they are."""
        chosen = self.select(names)
        with self.tables.write() as c:
            self.tables.lock_positions(c)
            reset(self.tables, c, chosen)
            positions = self.tables.read_positions(c)
        self._agrees(positions)
        return self.catch_up(on_progress)

    def catch_up(self, on_progress: Callable[[int, int], None] | None = None) -> int:
        """Apply everything recorded so far; returns how many log rows the
        batches it wrote covered."""
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
        """Apply one batch: log rows covered, 0 if none waited, -1 if another
        projector (or a rebuild) moved a position meanwhile (read again from
        the positions as they are now).

        Where several nodes project one database (PostgreSQL), the tracking
        rows are taken before the log is read, so the node that finds a
        position moved has read and decoded nothing. SQLite has one node, and
        its write lock stops the writer for as long as it is held, so there a
        batch is prepared first (read, decoded, and folded into the rows it
        touches, as they stand in one read snapshot where the positions are
        this projector's), and the lock is taken only to check that the
        positions are still those and write the rows. See
        docs/adr/0021-prepare-a-sqlite-projection-batch-before-taking-the-write-lock.md.
        """
        if self.tables.lock_before_read:
            with self.tables.write() as c:
                if not self._agrees(self.tables.lock_positions(c)):
                    return -1
                rows = self._read(self.position + 1, self.batch_size)
                if not rows:
                    return 0
                batch = self._decoded(rows)
                self._write(c, self._folded(c, batch), batch.last)
            self._moved_to(batch.last)
            return batch.count
        rows = self._read(self.position + 1, self.batch_size)
        if not rows:
            # Nothing new, but a projection may have been reset under us (a
            # `projections rebuild` that emptied it, possibly interrupted):
            # then this projector's position for it is stale and goes back too.
            return 0 if self._agrees(self.tables.positions()) else -1
        batch = self._decoded(rows)
        with self.tables.snapshot() as c:
            # The rows as of these positions exactly, or give up: a view is a
            # pure fold of the log up to its projection's position, so rows
            # read where the tracking rows say these positions are the rows
            # there still when, under the lock below, they say the same again.
            if not self._agrees(self.tables.read_positions(c)):
                return -1
            folded = self._folded(c, batch)
        with self.tables.write() as c:
            if not self._agrees(self.tables.lock_positions(c)):
                return -1
            self._write(c, folded, batch.last)
        self._moved_to(batch.last)
        return batch.count

    def _agrees(self, positions: dict[str, int]) -> bool:
        """Whether the tracking rows say what this projector holds for each
        of its projections; if not, it takes theirs."""
        found = {name: positions.get(name, 0) for name in self.positions}
        if found != self.positions:
            self.positions = found
            return False
        return True

    def _decoded(self, rows: Sequence[LogRow]) -> _Batch:
        return _Batch([row[0] for row in rows], [self._decode(row) for row in rows])

    def _folded(self, c: Any, batch: _Batch) -> list[tuple[Projection, list[Row]]]:
        """Each projection behind the batch's end, with the rows the batch
        changes, folded from the rows as they stand (read through ``c``)."""
        folded = []
        for projection in self.projections:
            after = self.positions[projection.name]
            if after >= batch.last:
                continue
            events: dict[str, list[WireEvent]] = {}
            row_key = projection.row_key
            for event in batch.events[bisect_right(batch.ids, after) :]:
                key = row_key(event)
                if key is not None:
                    events.setdefault(key, []).append(event)
            rows = projection.load(self.tables, c, list(events))
            folded.append((projection, _fold_all(rows, events, projection.fold)))
        return folded

    def _write(self, c: Any, folded: list[tuple[Projection, list[Row]]], last: int) -> None:
        for projection, rows in folded:
            projection.write(self.tables, c, rows)
        self.tables.set_positions(c, [projection.name for projection, _ in folded], last)

    def _moved_to(self, last: int) -> None:
        self.positions = {name: max(p, last) for name, p in self.positions.items()}


@dataclass(frozen=True)
class _Batch:
    """A batch of the log, decoded: its rows' notification IDs (ascending)
    and their wire events."""

    ids: list[int]
    events: list[WireEvent]

    @property
    def last(self) -> int:
        return self.ids[-1]

    @property
    def count(self) -> int:
        return len(self.ids)


def _fold_all(
    rows: dict[str, Row],
    events_by_key: dict[str, list[WireEvent]],
    fold: Fold,
) -> list[Row]:
    """The rows the events change; the loaded rows are the batch's own, so a
    fold may change them in place."""
    changed: list[Row] = []
    for key, events in events_by_key.items():
        row: Row | None = rows.get(key)
        for event in events:
            row = fold(row, event)
        if row is not None:
            changed.append(row)
    return changed
