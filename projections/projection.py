"""What a projection is: one read model, kept by the projector.

A projection is one object: its name (its row in ``sessiond_tracking``, which
holds the notification ID up to which it has been applied), the DDL of its
tables, which events it takes and into which row (``row_key``), how it folds
them (``fold``), and how it loads, writes and empties its rows. The rows are
views in wire shape; the default storage is one table keyed by one column,
a few of each row's fields copied into columns to index and query, and the
whole row as JSON in ``view``. A projection stored otherwise overrides
``load``, ``write``, ``truncate`` and ``count``.

Adding one is one module that defines it and one line in
``projections.projector.PROJECTIONS``; see
docs/adr/0024-register-each-projection-with-its-own-position.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from projections.tables import Cursor, Tables

# A read model's row: a view as PROTOCOL.md shows it.
Row = dict[str, Any]
# A recorded event as PROTOCOL.md shows it (service/storage/wire.py).
WireEvent = dict[str, Any]
# The row after an event, given the row before it (None: none yet). A fold
# never fails on an event it does not know: it leaves the row as it was, or
# moves only what every event moves.
Fold = Callable[[Row | None, WireEvent], Row | None]


@dataclass(frozen=True)
class Projection:
    name: str
    ddl: tuple[str, ...]
    # The key of the row an event folds into; None for an event this
    # projection does not take.
    row_key: Callable[[WireEvent], str | None]
    fold: Fold
    table: str
    # The row's fields copied into columns of ``table``, its key first.
    columns: tuple[str, ...]
    # The columns (besides ``view``) that a later event can change.
    changing: tuple[str, ...]

    def load(self, tables: Tables, c: Cursor, keys: Sequence[str]) -> dict[str, Row]:
        """The rows of ``keys`` that exist, as they stand (read through ``c``)."""
        return tables.load(c, self.table, self.columns[0], keys)

    def write(self, tables: Tables, c: Cursor, rows: Sequence[Row]) -> None:
        tables.upsert(c, self.table, self.columns, self.changing, rows)

    def truncate(self, tables: Tables, c: Cursor) -> None:
        """Delete every row (its position is the projector's to reset)."""
        c.execute(f"DELETE FROM {self.table}")

    def count(self, tables: Tables) -> int:
        with tables.read() as c:
            c.execute(f"SELECT COUNT(*) FROM {self.table}")
            return int(c.fetchone()[0])


def by_session(event: WireEvent) -> str | None:
    """Every event of a session's stream, into the row of that session."""
    return event.get("session_id")


def by_connection(event: WireEvent) -> str | None:
    """Every event of a connection's stream, into the row of that connection."""
    return event.get("connection_id")


def once_per_position(fold: Fold) -> Fold:
    """``fold`` for rows that carry their stream's ``position``: an event at
    or below it was applied already (a batch applied twice changes nothing)."""

    def once(row: Row | None, event: WireEvent) -> Row | None:
        if row is not None and event["position"] <= row["position"]:
            return row
        return fold(row, event)

    return once
