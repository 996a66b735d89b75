"""The shapes of the answers the edge adds for operators and watchers, each a
msgspec ``Struct``: declared once, encoded from the declaration, and the
source a generated API document reads (as service/edge/schema.py is for what
comes in).

* :class:`Kicked`: ``DELETE /v1/connections/{id}`` (202).
* :class:`StreamEvent`: the ``data`` of each message of
  ``GET /v1/sessions/{id}/stream`` (the event object of PROTOCOL.md, the same
  as over HTTP and WebSocket).
* :class:`NodeView`: ``GET /v1/node``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web

Position = Annotated[int, msgspec.Meta(ge=0)]
Timestamp = Annotated[str, msgspec.Meta(description="RFC 3339 UTC, with microseconds")]


class Kicked(msgspec.Struct, kw_only=True):
    """A kick was taken: the socket, wherever it is, gets a ``state`` CLOSED
    frame and close 4403 ``kicked`` once its node reads the detach."""

    connection_id: str
    session_id: str
    # False: the connection was closed already, and nothing was recorded.
    kicked: bool
    # The detach's position in the session's events (None when not kicked).
    position: Position | None


class StreamEvent(msgspec.Struct, kw_only=True):
    """One session event, as every read and stream shows it."""

    session_id: str
    position: Annotated[int, msgspec.Meta(ge=1)]
    type: str
    at: Timestamp
    data: dict[str, Any]


class ProjectionFigures(msgspec.Struct, kw_only=True):
    name: str
    # The last notification position applied to its tables.
    position: Position
    # How far behind the store's head it is, in notifications.
    lag: Position


class NodeView(msgspec.Struct, kw_only=True):
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
