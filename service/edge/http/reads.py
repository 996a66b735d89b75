"""Views as a handler reads them: from the projection once it holds the
caller's own writes, else from the log; and who may read which."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.application.auth import Principal
from service.edge.context import READMODELS, STORE
from service.edge.errors import ApiError
from service.edge.requests import run_read
from service.storage.wire import wire_view

# How long a view waits for the projection to include the latest write before
# answering from the log instead.
VIEW_PATIENCE = 5.0


async def caught_up(request: web.Request) -> int | None:
    """Wait until this node's projector holds every event recorded so far
    (read your writes, also those made through another node): the log's
    head then, None if it lags.

    The tables themselves may still be behind it: ``sessiond projections
    rebuild``, run beside the server, empties them and refills them batch by
    batch. Each read of a view therefore comes with the position its tables
    stood at, and a view from tables behind the head is not answered."""
    head = await run_read(request, request.app[STORE].ping)
    return head if await request.app[READMODELS].wait_for(head, VIEW_PATIENCE) else None


async def session_view(request: web.Request, session_id: str) -> dict[str, Any] | None:
    """The session view from the projection, or from the log if it lags."""
    head = await caught_up(request)
    if head is not None:
        tables = request.app[READMODELS].tables
        view, position = await run_read(request, tables.session_as_of, session_id)
        if position >= head:
            return view
    session = await run_read(request, request.app[STORE].get_session, session_id)
    return None if session is None else wire_view(session.view())


async def readable_session(
    request: web.Request, session_id: str, actor: Principal
) -> dict[str, Any]:
    view = await session_view(request, session_id)
    if view is None:
        raise ApiError("session_not_found", f"no session {session_id!r}")
    if not actor.can_read(view["owner"]):
        raise ApiError("forbidden", f"session {session_id!r} belongs to another user")
    return view


async def readable_connection(
    request: web.Request, connection_id: str, actor: Principal
) -> dict[str, Any]:
    head = await caught_up(request)
    view, position = None, -1
    if head is not None:
        tables = request.app[READMODELS].tables
        view, position = await run_read(request, tables.connection_as_of, connection_id)
    if head is None or position < head:
        connection = await run_read(request, request.app[STORE].get_connection, connection_id)
        view = None if connection is None else wire_view(connection.view())
    if view is None:
        raise ApiError("connection_not_found", f"no connection {connection_id!r}")
    if actor.is_auditor or actor.is_service or view["user_id"] == actor.user_id:
        return view
    session = await session_view(request, view["session_id"])
    if session is not None and session["owner"] == actor.user_id:
        return view
    raise ApiError("forbidden", f"connection {connection_id!r} belongs to another user")
