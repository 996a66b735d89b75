"""Audit replay: a session's history as a readable timeline or JSON lines,
straight from the store (no server needed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TextIO

import orjson

from domain.ids import session_stream
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


def _summary(event: dict[str, Any]) -> str:
    data = event["data"]
    kind = event["type"]
    if kind == "SessionCreated":
        return f"owner={data.get('owner')}"
    if kind == "MessageRecorded":
        content = str(data.get("content", ""))
        if len(content) > 60:
            content = content[:57] + "..."
        return f"{data.get('role')} {content!r} message_id={data.get('message_id')}"
    if kind == "TaskStarted":
        total = "" if data.get("total") is None else f" total={data['total']}"
        return f"task={data.get('task_id')} name={data.get('name')!r}{total}"
    if kind == "TaskProgressed":
        # A report may leave the total out (it stays as it was): show none.
        of = "" if data.get("total") is None else f"/{data['total']}"
        note = f" note={data['note']!r}" if data.get("note") else ""
        return f"task={data.get('task_id')} done={data.get('done')}{of}{note}"
    if kind == "TaskCompleted":
        return f"task={data.get('task_id')} result={orjson.dumps(data.get('result')).decode()}"
    if kind == "TaskFailed":
        return f"task={data.get('task_id')} error={data.get('error')!r}"
    if kind == "ConnectionAttached":
        return f"user={data.get('user_id')} node={data.get('node')}"
    if kind == "ConnectionDetached":
        by = f" by={data['superseded_by']}" if data.get("superseded_by") else ""
        return f"reason={data.get('reason')}{by}"
    if kind == "SessionEnded":
        return f"by={data.get('user_id')}"
    return " ".join(f"{k}={v}" for k, v in data.items())


def write_timeline(events: Iterator[dict[str, Any]], out: TextIO) -> int:
    count = 0
    for event in events:
        connection = event["data"].get("connection_id") or "-"
        out.write(
            f"{event['at']}  {event['position']:>6}  {event['type']:<18}  "
            f"conn={connection}  {_summary(event)}\n"
        )
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
