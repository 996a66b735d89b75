"""The shapes of what the HTTP API answers, declared once (msgspec Structs).

Handlers build their answers as plain JSON-ready objects (the projections'
rows, the writer's results); these declarations say what those objects are,
for the contract's documents (service/edge/contract.py) and for the tests
that check every answer against them. The request side is
service/edge/schema.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from service.edge.schema import ID

Timestamp = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$",
        description="RFC 3339, UTC, microseconds",
        examples=["2026-11-22T06:37:37.123456Z"],
    ),
]
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


class SessionEvents(Answer):
    events: list[SessionEvent]
    next_after: Position


class ConnectionEvents(Answer):
    events: list[ConnectionEvent]


class Recorded(Answer):
    position: Annotated[int, msgspec.Meta(ge=1)]


class MessageRecorded(Recorded):
    message_id: ID


class TaskStarted(Recorded):
    task_id: ID


class Health(Answer):
    status: Literal["ok"]
    node: str
    store: Literal["memory", "sqlite", "postgres"]
