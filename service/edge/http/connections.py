"""Connections: a socket's view and its lifecycle, for its user, the
session's owner, services and auditors."""

from __future__ import annotations

from aiohttp import web

from domain.ids import connection_stream
from service.edge.context import STORE
from service.edge.http.reads import readable_connection
from service.edge.requests import json_response, path_id, principal, run_read

routes = web.RouteTableDef()


@routes.get("/v1/connections/{connection_id}")
async def get_connection(request: web.Request) -> web.Response:
    actor = principal(request)
    connection_id = path_id(request, "connection_id")
    return json_response(await readable_connection(request, connection_id, actor))


@routes.get("/v1/connections/{connection_id}/events")
async def connection_events(request: web.Request) -> web.Response:
    actor = principal(request)
    connection_id = path_id(request, "connection_id")
    await readable_connection(request, connection_id, actor)
    store = request.app[STORE]
    events = await run_read(request, store.stream_wire_events, connection_stream(connection_id))
    return json_response({"events": events})
