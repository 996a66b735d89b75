"""The connections projection: one row per connection, its view.

``fold_connection(row, event)`` takes the view as it stood (or None) and one
recorded event of the connection's stream, and returns the view after it. It
works on the wire events of PROTOCOL.md rather than on domain classes, so it
never fails on a state it does not know: an unknown connection state is shown
as recorded (see ADR 0003), and an event that is not a transition (its type is
not the state its data names) leaves the state as it was.

The views are the same objects the aggregate's ``view()`` produces;
tests/integration/test_projections.py checks that they agree.
"""

from __future__ import annotations

from projections.projection import Projection, Row, WireEvent, by_connection, once_per_position


def fold_connection(row: Row | None, event: WireEvent) -> Row | None:
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
    if data.get("state") != kind:
        # Not a transition (a transition's type is the state it enters): a
        # refused one, a token refresh, an event of a newer node. The state
        # and everything else stay as they were.
        return row
    details = data.get("details") or {}
    row["state"] = kind
    if "user_id" in details:
        row["user_id"] = details["user_id"]
    if "code" in details:
        row["close_code"] = details["code"]
        row["close_reason"] = details.get("reason")
        row["closed_at"] = at
    return row


CONNECTIONS = Projection(
    name="connections",
    ddl=(
        """CREATE TABLE IF NOT EXISTS sessiond_connections (
            connection_id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL,
            node TEXT NOT NULL,
            state TEXT NOT NULL,
            position BIGINT NOT NULL,
            view TEXT NOT NULL
        )""",
        """CREATE INDEX IF NOT EXISTS sessiond_connections_by_node
            ON sessiond_connections (node, state)""",
    ),
    row_key=by_connection,
    fold=once_per_position(fold_connection),
    table="sessiond_connections",
    columns=("connection_id", "session_id", "node", "state", "position"),
    changing=("state", "position"),
)
