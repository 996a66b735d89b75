"""Connections: a socket's view and its lifecycle, for its user, the
session's owner, services and auditors; and the kick, for the session's owner
or a service."""

from __future__ import annotations

from aiohttp import web

from domain.ids import connection_stream
from service.application import commands
from service.edge.context import SOCKETS
from service.edge.contract import operation
from service.edge.http.reads import events_page, readable_connection
from service.edge.http.sessions import PAGE_DESCRIPTION
from service.edge.requests import (
    json_response,
    path_id,
    principal,
    query,
    run_command,
    writer,
)
from service.edge.responses import ConnectionEvents, ConnectionView, Kicked, respond
from service.edge.schema import ConnectionEventsQuery

routes = web.RouteTableDef()


@routes.get("/v1/connections/{connection_id}")
@operation(
    summary="A connection's view",
    answers={200: ConnectionView},
    errors=("invalid_id", "forbidden", "connection_not_found"),
)
async def get_connection(request: web.Request) -> web.Response:
    actor = principal(request)
    connection_id = path_id(request, "connection_id")
    return json_response(await readable_connection(request, connection_id, actor))


@routes.get("/v1/connections/{connection_id}/events")
@operation(
    summary="A connection's lifecycle, in order; an empty page is the end",
    query=ConnectionEventsQuery,
    answers={200: ConnectionEvents},
    errors=("invalid_id", "forbidden", "connection_not_found"),
    description=PAGE_DESCRIPTION,
)
async def connection_events(request: web.Request) -> web.Response:
    """Paged as a session's history is: a connection that refreshes its
    token for days has as many events as it had refreshes."""
    actor = principal(request)
    connection_id = path_id(request, "connection_id")
    asked = query(request, ConnectionEventsQuery)
    await readable_connection(request, connection_id, actor)
    return await events_page(request, connection_stream(connection_id), asked.after, asked.limit)


@routes.delete("/v1/connections/{connection_id}")
@operation(
    summary="Kick: the socket, wherever it is, is closed 4403 kicked",
    answers={202: Kicked},
    errors=("invalid_id", "forbidden", "connection_not_found"),
)
async def kick_connection(request: web.Request) -> web.Response:
    """202: an attached connection's detach is recorded on the session
    (reason ``kicked``), and the node holding the socket closes it 4403 when
    it reads that (ADR 0030); one still in its handshake has its CLOSED
    recorded, and its socket is closed here at once if this node holds it
    (ADR 0057)."""
    actor = writer(request)
    connection_id = path_id(request, "connection_id")
    session_id, position, kicked = await run_command(
        request, commands.kick_connection(connection_id, actor)
    )
    if kicked and position is None:
        socket = request.app[SOCKETS].sockets.get(connection_id)
        if socket is not None:
            socket.kicked(commands.KICKED_CODE, commands.KICKED_REASON)
    answer = Kicked(
        connection_id=connection_id, session_id=session_id, kicked=kicked, position=position
    )
    return respond(answer, 202)
