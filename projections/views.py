"""The connection view as a pure fold over recorded events (wire shape).

``fold_connection(row, event)`` takes the view as it stood (or None) and one
recorded event, and returns the view after it. It works on the wire events of
PROTOCOL.md rather than on domain classes, so it never fails on a state it
does not know: an unknown connection state is shown as recorded (see ADR
0003). The session view's fold is in projections/sessions.py.

The views are the same objects the aggregates' ``view()`` produce;
tests/integration/test_projections.py checks that they agree.
"""

from __future__ import annotations

from typing import Any

from projections.projection import Row


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
