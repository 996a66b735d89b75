"""Views as a handler reads them: from the projection once it holds the
caller's own writes, else from the log; and who may read which."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from aiohttp import web

from service.application.auth import Principal
from service.edge.context import READMODELS, SETTINGS, STORE
from service.edge.errors import ApiError
from service.edge.requests import json_response, run_read
from service.storage.wire import wire_view

# How long a view waits for the projection to include the latest write before
# answering from the log instead.
VIEW_PATIENCE = 5.0


async def caught_up(request: web.Request) -> int:
    """Wait until this node's projector holds every event recorded so far
    (read your writes, also those made through another node), for at most
    ``VIEW_PATIENCE`` and not at all while it is failing; the log's head.

    What a read compares with the head is the position its tables stood at,
    read with the rows: the projector may lag or fail with the tables whole,
    and ``sessiond projections rebuild``, run beside the server, empties them
    and refills them batch by batch while the projector holds the head. A
    view from tables behind the head is not answered from them."""
    head = await run_read(request, request.app[STORE].ping)
    await request.app[READMODELS].wait_for(head, VIEW_PATIENCE)
    return head


async def session_view(request: web.Request, session_id: str) -> dict[str, Any] | None:
    """The session view from the projection, or from the log if it lags."""
    tables, store = request.app[READMODELS].tables, request.app[STORE]
    return await _view(request, tables.session_as_of, store.get_session, session_id)


async def _view(
    request: web.Request,
    as_of: Callable[[str], tuple[dict[str, Any] | None, int]],
    from_log: Callable[[str], Any],
    key: str,
) -> dict[str, Any] | None:
    """``key``'s view from its table (``as_of``: the row and its table's
    position) once that holds the head, else folded from the log
    (``from_log``: the aggregate, or None)."""
    head = await caught_up(request)
    view, position = await run_read(request, as_of, key)
    if position >= head:
        return view
    found = await run_read(request, from_log, key)
    return None if found is None else wire_view(found.view())


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
    tables, store = request.app[READMODELS].tables, request.app[STORE]
    view = await _view(request, tables.connection_as_of, store.get_connection, connection_id)
    if view is None:
        raise ApiError("connection_not_found", f"no connection {connection_id!r}")
    if actor.is_auditor or actor.is_service or view["user_id"] == actor.user_id:
        return view
    session = await session_view(request, view["session_id"])
    if session is not None and session["owner"] == actor.user_id:
        return view
    raise ApiError("forbidden", f"connection {connection_id!r} belongs to another user")


async def events_page(request: web.Request, stream_id: str, after: int, limit: int) -> web.Response:
    """A page of a stream's events after ``after``: at most ``limit`` of them
    and at most the node's page bytes (one at least), with ``next_after``,
    the position to ask after next (ADR 0053)."""
    read = functools.partial(
        request.app[STORE].stream_wire_events,
        stream_id,
        after=after,
        limit=limit,
        max_bytes=request.app[SETTINGS].page_bytes,
    )
    events = await run_read(request, read)
    next_after = events[-1]["position"] if events else after
    return json_response({"events": events, "next_after": next_after})
