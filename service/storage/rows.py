"""The rows sessiond's recorders read and write, as plain tuples.

A *stream row* is one event of one stream: (stream ID, position in the
stream, topic, state as JSON bytes). A *log row* is the same with the
store's notification ID in front: the global order the projector and the
follower read in. Tuples rather than eventsourcing's ``StoredEvent`` and
``Notification`` objects: building those dataclasses cost more than the
JSON in them on the hot paths (bench/).

Every recorder sessiond runs on (memory, SQLite, PostgreSQL) is one of its
own, an eventsourcing ``ApplicationRecorder`` that also reads and writes
these rows: a ``RowRecorder``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from eventsourcing.persistence import StoredEvent

StreamRow = tuple[str, int, str, bytes]
LogRow = tuple[int, str, int, str, bytes]
# Either kind of row: the state is the last of each.
Row = TypeVar("Row", StreamRow, LogRow)


@runtime_checkable
class RowRecorder(Protocol):
    """What sessiond's recorders add to eventsourcing's ``ApplicationRecorder``.

    The rows are exactly those eventsourcing's own methods write and read
    (``insert_events``, ``select_events``, ``select_notifications``).
    """

    def insert_rows(self, rows: Sequence[StreamRow]) -> list[int]:
        """Insert the rows in one transaction; their notification IDs."""
        ...

    def select_rows(self, start: int, limit: int, max_bytes: int | None = None) -> list[LogRow]:
        """Up to ``limit`` notification-log rows from ID ``start`` on; with
        ``max_bytes``, only as many as fit that many bytes of state (always
        the first): see :func:`fitting`."""
        ...

    def select_stream_rows(
        self,
        stream_id: str,
        *,
        gt: int | None = None,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StreamRow]:
        """A stream's rows after position ``gt``, oldest first; with
        ``max_bytes``, only as many as fit that many bytes of state (always
        the first, whatever its size): see :func:`fitting`."""
        ...

    def close_connections(self) -> None:
        """Close the connections the recorder opened outside eventsourcing's
        datastore (the application closes the datastore)."""
        ...


def fitting(rows: Iterable[Row], max_bytes: int | None) -> list[Row]:
    """The leading rows of ``rows`` whose states add up to at most
    ``max_bytes`` (None: all of them), and always the first, so a reader
    paging through a stream always moves on. ``rows`` is consumed only as
    far as needed: one row past the bound at most is held."""
    if max_bytes is None:
        return list(rows)
    page: list[Row] = []
    total = 0
    for row in rows:
        total += len(row[-1])
        if page and total > max_bytes:
            break
        page.append(row)
    return page


def stream_rows(stored_events: Sequence[StoredEvent]) -> list[StreamRow]:
    """eventsourcing's stored events as stream rows (what sessiond's recorders
    insert)."""
    return [(str(s.originator_id), s.originator_version, s.topic, s.state) for s in stored_events]
