"""The sessions projection, and session events as the read side knows them.

Each event class nested in ``domain.session.Session`` has one entry in
``SESSION_EVENTS``, keyed by its wire type (``cls.wire_name({})``, the class
name), saying everything the read side does with it:

* ``fold``: the session view after the event (the view and the event in wire
  shape, as PROTOCOL.md shows them). A fold may change the row it is given
  and its lists; ``fold_session`` copies them first, ``apply_session`` does
  not (a projector folding a batch into rows it owns).
* ``timeline``: the text of its line in ``sessiond replay``.
* ``wire``: its wire shape, given the generic one that
  service/storage/wire.py makes; None (every event so far) keeps that.

tests/unit/test_session_events.py fails when an event class of ``Session``
has no entry, so a new event cannot reach the log without a read side. An
event type with no entry here (written by a newer node) still folds, moving
only ``position`` and ``updated_at``, and still shows a line (its data as
``key=value``).

``SESSIONS`` keeps one row per session, its view, folded by these entries.
The views are the same objects the aggregate's ``view()`` produces;
tests/integration/test_projections.py checks that they agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from domain.base import Aggregate
from domain.session import Session
from projections.projection import (
    Fold,
    Projection,
    Row,
    WireEvent,
    by_session,
    once_per_position,
)

ACTIVE, ENDED = "ACTIVE", "ENDED"
RUNNING, COMPLETED, FAILED = "RUNNING", "COMPLETED", "FAILED"

Data = dict[str, Any]
Timeline = Callable[[Data], str]
WireShape = Callable[[WireEvent], WireEvent]


@dataclass(frozen=True)
class SessionEvent:
    """What one type of session event means to the read side."""

    event: type[Aggregate.Event]
    fold: Fold
    timeline: Timeline
    wire: WireShape | None = None

    @property
    def type(self) -> str:
        return self.event.wire_name({})


# --- folds ---------------------------------------------------------------------


def _created(row: Row | None, event: WireEvent) -> Row:
    data, at = event["data"], event["at"]
    return {
        "session_id": event["session_id"],
        "owner": data["owner"],
        "state": ACTIVE,
        "created_at": at,
        "updated_at": at,
        "position": event["position"],
        "metadata": data.get("metadata") or {},
        "message_count": 0,
        "tasks": [],
        "connections": [],
    }


def _later(change: Callable[[Row, Data], None]) -> Fold:
    """The fold of an event recorded after the session was created: no row
    for a session whose creation this model never saw; otherwise the row
    moves to the event's position and time, then changes as the data says."""

    def fold(row: Row | None, event: WireEvent) -> Row | None:
        if row is None:
            return None
        row["position"] = event["position"]
        row["updated_at"] = event["at"]
        change(row, event["data"])
        return row

    return fold


def _on_task(change: Callable[[Row, Data], None]) -> Fold:
    """``_later`` for an event about one task: ``change`` gets a copy of the
    task its ``task_id`` names (the caller of ``fold_session`` keeps the
    task it had)."""

    def change_task(row: Row, data: Data) -> None:
        tasks = row["tasks"]
        for i, task in enumerate(tasks):
            if task["task_id"] == data["task_id"]:
                tasks[i] = task = dict(task)
                change(task, data)

    return _later(change_task)


def _message_recorded(row: Row, data: Data) -> None:
    row["message_count"] += 1


def _task_started(row: Row, data: Data) -> None:
    row["tasks"].append(
        {
            "task_id": data["task_id"],
            "name": data["name"],
            "state": RUNNING,
            "done": 0,
            "total": data.get("total"),
            "note": None,
            "result": None,
            "error": None,
        }
    )


def _task_progressed(task: Row, data: Data) -> None:
    task["done"] = data["done"]
    if data.get("total") is not None:
        task["total"] = data["total"]
    if data.get("note") is not None:
        task["note"] = data["note"]


def _task_completed(task: Row, data: Data) -> None:
    task["state"] = COMPLETED
    task["result"] = data.get("result")
    if task["total"] is not None:
        task["done"] = task["total"]


def _task_failed(task: Row, data: Data) -> None:
    task["state"] = FAILED
    task["error"] = data.get("error")


def _connection_attached(row: Row, data: Data) -> None:
    row["connections"].append(data["connection_id"])


def _connection_detached(row: Row, data: Data) -> None:
    row["connections"] = [c for c in row["connections"] if c != data["connection_id"]]


def _session_ended(row: Row, data: Data) -> None:
    row["state"] = ENDED


def _nothing(row: Row, data: Data) -> None:
    pass


# --- timeline lines ------------------------------------------------------------


def _message_line(data: Data) -> str:
    content = str(data.get("content", ""))
    if len(content) > 60:
        content = content[:57] + "..."
    return f"{data.get('role')} {content!r} message_id={data.get('message_id')}"


def _task_started_line(data: Data) -> str:
    total = "" if data.get("total") is None else f" total={data['total']}"
    return f"task={data.get('task_id')} name={data.get('name')!r}{total}"


def _task_progressed_line(data: Data) -> str:
    # A report may leave the total out (it stays as it was): show none.
    of = "" if data.get("total") is None else f"/{data['total']}"
    note = f" note={data['note']!r}" if data.get("note") else ""
    return f"task={data.get('task_id')} done={data.get('done')}{of}{note}"


def _connection_detached_line(data: Data) -> str:
    by = f" by={data['superseded_by']}" if data.get("superseded_by") else ""
    return f"reason={data.get('reason')}{by}"


def _data_line(data: Data) -> str:
    return " ".join(f"{k}={v}" for k, v in data.items())


# --- the registry --------------------------------------------------------------


def _by_type(*entries: SessionEvent) -> dict[str, SessionEvent]:
    registry: dict[str, SessionEvent] = {}
    for entry in entries:
        if entry.type in registry:
            raise ValueError(f"two entries for session event type {entry.type!r}")
        registry[entry.type] = entry
    return registry


SESSION_EVENTS = _by_type(
    SessionEvent(
        Session.SessionCreated,
        _created,
        lambda data: f"owner={data.get('owner')}",
    ),
    SessionEvent(Session.MessageRecorded, _later(_message_recorded), _message_line),
    SessionEvent(Session.TaskStarted, _later(_task_started), _task_started_line),
    SessionEvent(Session.TaskProgressed, _on_task(_task_progressed), _task_progressed_line),
    SessionEvent(
        Session.TaskCompleted,
        _on_task(_task_completed),
        lambda data: (
            f"task={data.get('task_id')} result={orjson.dumps(data.get('result')).decode()}"
        ),
    ),
    SessionEvent(
        Session.TaskFailed,
        _on_task(_task_failed),
        lambda data: f"task={data.get('task_id')} error={data.get('error')!r}",
    ),
    SessionEvent(
        Session.ConnectionAttached,
        _later(_connection_attached),
        lambda data: f"user={data.get('user_id')} node={data.get('node')}",
    ),
    SessionEvent(
        Session.ConnectionDetached, _later(_connection_detached), _connection_detached_line
    ),
    SessionEvent(
        Session.SessionEnded,
        _later(_session_ended),
        lambda data: f"by={data.get('user_id')}",
    ),
)

# An event type this code does not know: its data, and the time it happened.
_unknown_fold = _later(_nothing)


def apply_session(row: Row | None, event: WireEvent) -> Row | None:
    """The session view after ``event``, changing ``row`` in place (and its
    lists): for a projector that owns the row it folds a whole batch into,
    and so copies it once per batch instead of once per event."""
    entry = SESSION_EVENTS.get(event["type"])
    return (_unknown_fold if entry is None else entry.fold)(row, event)


def fold_session(row: Row | None, event: WireEvent) -> Row | None:
    """The session view after ``event`` (``row`` is left as it was)."""
    if row is not None:
        row = {**row, "tasks": list(row["tasks"]), "connections": list(row["connections"])}
    return apply_session(row, event)


def timeline(event: WireEvent) -> str:
    """What a session event's line in ``sessiond replay`` says after its type."""
    entry = SESSION_EVENTS.get(event["type"])
    return (_data_line if entry is None else entry.timeline)(event["data"])


def wire_shape(cls: type[Aggregate.Event]) -> WireShape | None:
    """The wire shape an event class has instead of the generic one, if any."""
    for entry in SESSION_EVENTS.values():
        if entry.event is cls:
            return entry.wire
    return None


SESSIONS = Projection(
    name="sessions",
    ddl=(
        """CREATE TABLE IF NOT EXISTS sessiond_sessions (
            session_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at TEXT NOT NULL,
            position BIGINT NOT NULL,
            view TEXT NOT NULL
        )""",
        """CREATE INDEX IF NOT EXISTS sessiond_sessions_by_owner
            ON sessiond_sessions (owner, created_at DESC, session_id DESC)""",
        """CREATE INDEX IF NOT EXISTS sessiond_sessions_by_time
            ON sessiond_sessions (created_at DESC, session_id DESC)""",
    ),
    row_key=by_session,
    # The projector owns the rows it loads for a batch: it folds in place.
    fold=once_per_position(apply_session),
    table="sessiond_sessions",
    columns=("session_id", "owner", "state", "created_at", "position"),
    changing=("state", "position"),
)
