"""Audit replay: a session's history as a readable timeline or JSON lines,
straight from the store (no server needed)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from domain.ids import session_stream
from projections.sessions import timeline
from service.storage.rows import StreamRow
from service.storage.store import SessiondApplication
from service.storage.wire import json_line_from_row4, wire_from_rows4

# Rows a read: a page's rows and their output are short-lived, so the heap
# stays small (pages of 20,000 were a fifth slower than pages of 2,000).
PAGE = 2000


def iter_session_rows(
    store: SessiondApplication, session_id: str, at: int | None = None
) -> Iterator[list[StreamRow]]:
    """The session's stored rows, page by page, up to position ``at``."""
    after = 0
    while True:
        limit = PAGE if at is None else min(PAGE, at - after)
        if limit <= 0:
            return
        rows = store.stream_rows(session_stream(session_id), after=after, limit=limit)
        if rows:
            yield rows
        if len(rows) < limit:
            return
        after = rows[-1][1]


def iter_session_events(
    store: SessiondApplication, session_id: str, at: int | None = None
) -> Iterator[dict[str, Any]]:
    for rows in iter_session_rows(store, session_id, at):
        yield from wire_from_rows4(rows)


def printable(text: str) -> str:
    """``text`` with its control characters escaped as Python writes them
    (``\\x1b``): what a writer or a token's ``sub`` put in an event is shown
    to a terminal as text and never drives it (clears, retitles, moves)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def timeline_line(event: dict[str, Any]) -> str:
    """One event as a line of the timeline (``sessiond replay``, ``sessiond tail``)."""
    connection = event["data"].get("connection_id") or "-"
    return printable(
        f"{event['at']}  {event['position']:>6}  {event['type']:<18}  "
        f"conn={connection}  {timeline(event)}"
    )


def write_timeline(events: Iterator[dict[str, Any]], out: TextIO) -> int:
    count = 0
    for event in events:
        out.write(timeline_line(event) + "\n")
        count += 1
    return count


def write_json_lines(pages: Iterable[list[StreamRow]], out: Any) -> int:
    """The rows' events as JSON lines, to a binary stream (``sys.stdout.buffer``)."""
    count = 0
    line = json_line_from_row4
    for rows in pages:
        out.write(b"".join([line(row) for row in rows]))
        count += len(rows)
    return count
