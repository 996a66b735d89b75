"""Audit replay: a session's history as a readable timeline or JSON lines,
straight from the store (no server needed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TextIO

import orjson

from domain.ids import session_stream
from projections.sessions import timeline
from service.storage.store import SessiondApplication

PAGE = 20000


def iter_session_events(
    store: SessiondApplication, session_id: str, at: int | None = None
) -> Iterator[dict[str, Any]]:
    after = 0
    while True:
        limit = PAGE if at is None else min(PAGE, at - after)
        if limit <= 0:
            return
        events = store.stream_wire_events(session_stream(session_id), after=after, limit=limit)
        yield from events
        if len(events) < limit:
            return
        after = events[-1]["position"]


def timeline_line(event: dict[str, Any]) -> str:
    """One event as a line of the timeline (``sessiond replay``, ``sessiond tail``)."""
    connection = event["data"].get("connection_id") or "-"
    return (
        f"{event['at']}  {event['position']:>6}  {event['type']:<18}  "
        f"conn={connection}  {timeline(event)}"
    )


def write_timeline(events: Iterator[dict[str, Any]], out: TextIO) -> int:
    count = 0
    for event in events:
        out.write(timeline_line(event) + "\n")
        count += 1
    return count


def write_json_lines(events: Iterator[dict[str, Any]], out: Any) -> int:
    """JSON lines to a binary stream (``sys.stdout.buffer``)."""
    count = 0
    buffer: list[bytes] = []
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    for event in events:
        buffer.append(dumps(event, option=newline))
        if len(buffer) >= 1000:
            out.write(b"".join(buffer))
            count += len(buffer)
            buffer.clear()
    if buffer:
        out.write(b"".join(buffer))
        count += len(buffer)
    return count
