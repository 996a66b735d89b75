"""The shapes of what the HTTP API answers, declared once (msgspec Structs).

Handlers build most answers as plain JSON-ready objects (the projections'
rows, the writer's results); these declarations say what those objects are,
for the contract's documents (service/edge/contract.py) and for the tests
that check answers against them. A few answers are encoded straight from
their Struct (:func:`respond`). The request side is service/edge/schema.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from service.edge.schema import ID, Timestamp

Position = Annotated[int, msgspec.Meta(ge=0, description="a position in a session's history")]
Number = int | float


class Answer(msgspec.Struct, kw_only=True):
    """An answer object; fields beyond these may be added compatibly."""


class ErrorDetail(Answer):
    code: Annotated[str, msgspec.Meta(description="snake_case, stable")]
    message: Annotated[str, msgspec.Meta(description="for people")]


class ErrorBody(Answer):
    error: ErrorDetail


class TaskView(Answer):
    task_id: ID
    name: str
    state: Literal["RUNNING", "COMPLETED", "FAILED"]
    done: Number
    total: Number | None
    note: str | None = None
    result: Any = None
    error: str | None = None


class SessionView(Answer):
    session_id: ID
    owner: str
    state: Literal["ACTIVE", "ENDED"]
    created_at: Timestamp
    updated_at: Timestamp
    position: Position
    metadata: dict[str, Any]
    message_count: Annotated[int, msgspec.Meta(ge=0)]
    tasks: list[TaskView]
    connections: Annotated[list[ID], msgspec.Meta(description="the live connections' IDs")]


class SessionPage(Answer):
    sessions: list[SessionView]
    next_cursor: str | None


class ConnectionView(Answer):
    connection_id: ID
    session_id: ID
    user_id: str | None
    state: str
    opened_at: Timestamp
    closed_at: Timestamp | None
    close_code: int | None
    close_reason: str | None
    node: str
    updated_at: Timestamp | None = None
    position: Position | None = None


class SessionEvent(Answer):
    session_id: ID
    position: Annotated[int, msgspec.Meta(ge=1)]
    type: Annotated[str, msgspec.Meta(examples=["MessageRecorded", "TaskProgressed"])]
    at: Timestamp
    data: dict[str, Any]


class ConnectionEvent(Answer):
    connection_id: ID
    position: Annotated[int, msgspec.Meta(ge=1)]
    type: Annotated[str, msgspec.Meta(description="the state entered, or TransitionRefused")]
    at: Timestamp
    data: dict[str, Any]


# Each message of ``GET /v1/sessions/{id}/stream`` carries one as its ``data``.
StreamEvent = SessionEvent


class SessionEvents(Answer):
    events: list[SessionEvent]
    next_after: Position


class ConnectionEvents(Answer):
    events: list[ConnectionEvent]
    next_after: Position


class Recorded(Answer):
    position: Annotated[int, msgspec.Meta(ge=1)]


class MessageRecorded(Recorded):
    message_id: ID


class TaskStarted(Recorded):
    task_id: ID


class Liveness(Answer):
    status: Literal["live"]
    node: str


class Health(Answer):
    status: Literal["ok"]
    node: str
    store: Literal["memory", "sqlite", "postgres"]


class Kicked(Answer):
    """A kick was taken: the socket, wherever it is, gets a ``state`` CLOSED
    frame and close 4403 ``kicked``."""

    connection_id: ID
    session_id: ID
    # False: the connection was closed already, and nothing was recorded.
    kicked: bool
    # The detach's position in the session's events (None when nothing was
    # recorded on the session: not kicked, or kicked in its handshake).
    position: Position | None


class ProjectionFigures(Answer):
    name: str
    # The last notification position applied to its tables.
    position: Position
    # How far behind the store's head it is, in notifications.
    lag: Position


class NodeView(Answer):
    """One node at a glance, from the figures ``/metrics`` exports."""

    node: str
    # "sqlite", "postgres" or "memory".
    store: str
    started_at: Timestamp
    uptime_seconds: float
    # Live sockets on this node by lifecycle state (every live state, 0 included).
    connections: dict[str, int]
    # Live event-stream watchers on this node.
    watchers: int
    # Events this node's writer appended since it started.
    events_appended: int
    # The store's last notification position (every node's writes), as read
    # for this answer; None when the store did not answer.
    head: Position | None
    projections: list[ProjectionFigures]


def respond(answer: msgspec.Struct, status: int = 200) -> web.Response:
    """``answer`` as a JSON response, encoded from its declaration."""
    return web.Response(
        body=msgspec.json.encode(answer), status=status, content_type="application/json"
    )
