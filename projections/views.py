"""The read models as pure folds over recorded events (wire shape).

``fold_session(row, event)`` and ``fold_connection(row, event)`` take the view
as it stood (or None) and one recorded event, and return the view after it.
They work on the wire events of PROTOCOL.md rather than on domain classes, so
a projection never fails on an event type or a state it does not know: an
unknown session event only moves ``position`` and ``updated_at``, and an
unknown connection state is shown as recorded (see ADR 0003).

The views are the same objects the aggregates' ``view()`` produce;
tests/integration/test_projections.py checks that they agree.
"""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]

ACTIVE, ENDED = "ACTIVE", "ENDED"
RUNNING, COMPLETED, FAILED = "RUNNING", "COMPLETED", "FAILED"


def fold_session(row: Row | None, event: dict[str, Any]) -> Row | None:
    """The session view after ``event`` (``row`` is left as it was)."""
    if row is not None:
        row = {**row, "tasks": list(row["tasks"]), "connections": list(row["connections"])}
    return apply_session(row, event)


def apply_session(row: Row | None, event: dict[str, Any]) -> Row | None:
    """``fold_session``, changing ``row`` in place (and its lists): for a
    projector that owns the row it folds a whole batch into, and so copies it
    once per batch instead of once per event."""
    kind, data, at = event["type"], event["data"], event["at"]
    if kind == "SessionCreated":
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
    if row is None:
        return None  # events of a session whose creation this model never saw
    row["position"] = event["position"]
    row["updated_at"] = at
    if kind == "MessageRecorded":
        row["message_count"] += 1
    elif kind == "TaskStarted":
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
    elif kind in ("TaskProgressed", "TaskCompleted", "TaskFailed"):
        tasks = row["tasks"]
        task_id = data["task_id"]
        for i, task in enumerate(tasks):
            if task["task_id"] == task_id:
                tasks[i] = _fold_task(task, kind, data)
    elif kind == "ConnectionAttached":
        row["connections"].append(data["connection_id"])
    elif kind == "ConnectionDetached":
        row["connections"] = [c for c in row["connections"] if c != data["connection_id"]]
    elif kind == "SessionEnded":
        row["state"] = ENDED
    return row


def _fold_task(task: Row, kind: str, data: dict[str, Any]) -> Row:
    task = dict(task)
    if kind == "TaskProgressed":
        task["done"] = data["done"]
        if data.get("total") is not None:
            task["total"] = data["total"]
        if data.get("note") is not None:
            task["note"] = data["note"]
    elif kind == "TaskCompleted":
        task["state"] = COMPLETED
        task["result"] = data.get("result")
        if task["total"] is not None:
            task["done"] = task["total"]
    else:
        task["state"] = FAILED
        task["error"] = data.get("error")
    return task


def fold_connection(row: Row | None, event: dict[str, Any]) -> Row | None:
    kind, data, at = event["type"], event["data"], event["at"]
    if row is None:
        if "session_id" not in data or "node" not in data:
            return None
        return {
            "connection_id": event["connection_id"],
            "session_id": data["session_id"],
            "user_id": None,
            "state": data.get("state", kind),
            "opened_at": at,
            "updated_at": at,
            "closed_at": None,
            "close_code": None,
            "close_reason": None,
            "node": data["node"],
            "position": event["position"],
        }
    row = {**row, "position": event["position"], "updated_at": at}
    if kind == "TransitionRefused":
        return row
    details = data.get("details") or {}
    row["state"] = data.get("state", kind)
    if "user_id" in details:
        row["user_id"] = details["user_id"]
    if "code" in details:
        row["close_code"] = details["code"]
        row["close_reason"] = details.get("reason")
        row["closed_at"] = at
    return row
